"""Property tests: a finished SmartFuture behaves exactly like its value."""

from __future__ import annotations

import cmath
import math
import operator
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smart_future import SmartFuture

BINARY_OPS: list[Callable[[Any, Any], Any]] = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.matmul,
    operator.truediv,
    operator.floordiv,
    operator.mod,
    operator.pow,
    operator.lshift,
    operator.rshift,
    operator.and_,
    operator.or_,
    operator.xor,
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    divmod,
]

INPLACE_OPS: list[Callable[[Any, Any], Any]] = [
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.imatmul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.ilshift,
    operator.irshift,
    operator.iand,
    operator.ior,
    operator.ixor,
]

UNARY_OPS: list[Callable[[Any], Any]] = [
    operator.neg,
    operator.pos,
    operator.abs,
    operator.invert,
    operator.not_,
    operator.truth,
    operator.index,
    int,
    float,
    complex,
    str,
    round,
    math.trunc,
    math.floor,
    math.ceil,
    lambda x: round(x, 2),
    lambda x: format(x, ".3g"),
]

# Bounded so that pow and shifts stay cheap; infinities are allowed (results
# may be nan, which same() treats as equal to nan).
numbers = st.one_of(
    st.integers(min_value=-300, max_value=300),
    st.floats(allow_nan=False, min_value=-1e6, max_value=1e6),
    st.sampled_from([0, 0.0, -0.0, 1, -1, float("inf"), float("-inf")]),
    st.booleans(),
)


def done(value: Any) -> SmartFuture[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return SmartFuture(future)


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("value", fn())
    except Exception as exc:
        return ("raised", (type(exc), exc.args))


def same(x: Any, y: Any) -> bool:
    if type(x) is not type(y):
        return False
    if isinstance(x, tuple):
        return len(x) == len(y) and all(same(a, b) for a, b in zip(x, y, strict=True))
    if isinstance(x, float) and math.isnan(x):
        return math.isnan(y)
    if isinstance(x, complex) and cmath.isnan(x):
        return cmath.isnan(y)
    return bool(x == y)


def check(expected: tuple[str, Any], actual: tuple[str, Any]) -> None:
    assert expected[0] == actual[0], (expected, actual)
    assert same(expected[1], actual[1]), (expected, actual)


@pytest.mark.parametrize("op", BINARY_OPS, ids=lambda op: op.__name__)
@given(a=numbers, b=numbers)
def test_binary_left(op: Callable[[Any, Any], Any], a: Any, b: Any) -> None:
    check(outcome(lambda: op(a, b)), outcome(lambda: op(done(a), b)))


@pytest.mark.parametrize("op", BINARY_OPS, ids=lambda op: op.__name__)
@given(a=numbers, b=numbers)
def test_binary_reflected(op: Callable[[Any, Any], Any], a: Any, b: Any) -> None:
    check(outcome(lambda: op(a, b)), outcome(lambda: op(a, done(b))))


@pytest.mark.parametrize("op", BINARY_OPS, ids=lambda op: op.__name__)
@given(a=numbers, b=numbers)
def test_binary_both_sides(op: Callable[[Any, Any], Any], a: Any, b: Any) -> None:
    check(outcome(lambda: op(a, b)), outcome(lambda: op(done(a), done(b))))


@pytest.mark.parametrize("op", INPLACE_OPS, ids=lambda op: op.__name__)
@given(a=numbers, b=numbers)
def test_inplace(op: Callable[[Any, Any], Any], a: Any, b: Any) -> None:
    check(outcome(lambda: op(a, b)), outcome(lambda: op(done(a), done(b))))


@pytest.mark.parametrize("op", UNARY_OPS, ids=lambda op: getattr(op, "__name__", "op"))
@given(a=numbers)
def test_unary(op: Callable[[Any], Any], a: Any) -> None:
    check(outcome(lambda: op(a)), outcome(lambda: op(done(a))))


@given(
    a=st.integers(min_value=-300, max_value=300),
    b=st.integers(min_value=0, max_value=300),
    m=st.integers(min_value=-50, max_value=50),
)
def test_pow_modulo(a: int, b: int, m: int) -> None:
    expected = outcome(lambda: pow(a, b, m))
    check(expected, outcome(lambda: pow(done(a), b, m)))
    check(expected, outcome(lambda: pow(done(a), done(b), done(m))))


@given(a=numbers)
def test_hash_is_identity_and_never_waits(a: Any) -> None:
    sf = done(a)
    assert sf == a
    assert hash(sf) == hash(sf) and {sf: 1}[sf] == 1
    assert SmartFuture(sf.future) not in {sf}  # another wrapper of the same future


@given(items=st.lists(st.integers()), probe=st.integers())
def test_sequence_protocols(items: list[int], probe: int) -> None:
    sf = done(items)
    assert len(sf) == len(items)
    assert list(sf) == items
    assert list(reversed(sf)) == items[::-1]
    assert (probe in sf) == (probe in items)
    check(outcome(lambda: items[probe]), outcome(lambda: sf[probe]))


@given(a=numbers)
def test_exception_propagates_through_every_op(a: Any) -> None:
    future: Future[Any] = Future()
    future.set_exception(ZeroDivisionError("task failed"))
    sf = SmartFuture(future)
    for op in BINARY_OPS:
        with pytest.raises(ZeroDivisionError, match="task failed"):
            op(sf, a)
        with pytest.raises(ZeroDivisionError, match="task failed"):
            op(a, sf)
