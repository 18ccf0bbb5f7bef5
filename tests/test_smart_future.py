"""Tests for smart_future.SmartFuture."""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import operator
import pickle
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import cloudpickle
import numpy as np
import pytest
from sigint_helpers import interrupt_main_when_blocked

import smart_future
from smart_future import SmartFuture, _interrupt, register_interrupt_hook

WAIT = 10.0  # generous timeout for Event/Barrier waits


def done(value: Any) -> SmartFuture[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return SmartFuture(future)


def failed(exc: BaseException) -> SmartFuture[Any]:
    future: Future[Any] = Future()
    future.set_exception(exc)
    return SmartFuture(future)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=1)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------
# Construction and Future API
# ----------------------------------------------------------------------


def test_wraps_future_and_exposes_it() -> None:
    future: Future[int] = Future()
    sf = SmartFuture(future)
    assert sf.future is future
    assert isinstance(sf, SmartFuture)
    assert type(sf) is SmartFuture
    assert SmartFuture(sf).future is future


def test_rejects_non_future() -> None:
    with pytest.raises(TypeError, match=r"concurrent\.futures\.Future"):
        SmartFuture(42)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_generic_alias_call_does_not_block() -> None:
    future: Future[int] = Future()  # never completed: setting __orig_class__ must not wait
    sf = SmartFuture[int](future)
    assert sf.future is future
    assert not sf.done()


def test_slots_no_instance_dict() -> None:
    assert SmartFuture.__dictoffset__ == 0
    assert set(SmartFuture.__slots__) == {"future", "__weakref__"}


def test_memory_per_pending_future_is_small() -> None:
    n = 20_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        items: list[SmartFuture[int]] = [SmartFuture(Future()) for _ in range(n)]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(items) == n
    assert (after - before) / n < 2000


def test_future_api_delegation(pool: ThreadPoolExecutor) -> None:
    started, release = threading.Event(), threading.Event()

    def task() -> int:
        started.set()
        assert release.wait(WAIT)
        return 7

    sf = SmartFuture(pool.submit(task))
    queued = SmartFuture(pool.submit(task))
    assert started.wait(WAIT)
    assert sf.running() and not sf.done() and not sf.cancelled()
    assert not sf.cancel()
    assert not queued.running()
    assert queued.cancel()
    assert queued.cancelled() and queued.done()
    with pytest.raises(CancelledError):
        queued.result()
    with pytest.raises(TimeoutError):
        sf.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        sf.exception(timeout=0.01)
    release.set()
    assert sf.result(timeout=WAIT) == 7
    assert sf.value == 7
    assert sf.exception() is None
    assert sf.done() and not sf.running()


def test_exception_and_value_reraise() -> None:
    exc = ValueError("boom")
    sf = failed(exc)
    assert sf.exception() is exc
    with pytest.raises(ValueError, match="boom"):
        sf.result()
    with pytest.raises(ValueError, match="boom"):
        _ = sf.value


def test_add_done_callback_receives_smart_future() -> None:
    future: Future[int] = Future()
    sf = SmartFuture(future)
    seen: list[Any] = []
    sf.add_done_callback(seen.append)
    assert seen == []
    future.set_result(1)
    assert len(seen) == 1 and seen[0] is sf
    sf.add_done_callback(seen.append)  # already done: called at once
    assert len(seen) == 2 and seen[1] is sf


# ----------------------------------------------------------------------
# Using the value
# ----------------------------------------------------------------------

BINARY = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.mod,
    operator.pow,
    operator.lshift,
    operator.rshift,
    operator.and_,
    operator.or_,
    operator.xor,
    divmod,
]


@pytest.mark.parametrize("op", BINARY, ids=lambda op: op.__name__)
def test_binary_operators_all_sides(op: Callable[[Any, Any], Any]) -> None:
    assert op(done(13), 3) == op(13, 3)
    assert op(13, done(3)) == op(13, 3)
    assert op(done(13), done(3)) == op(13, 3)


@pytest.mark.parametrize(
    "iop,op",
    [
        (operator.iadd, operator.add),
        (operator.isub, operator.sub),
        (operator.imul, operator.mul),
        (operator.itruediv, operator.truediv),
        (operator.ifloordiv, operator.floordiv),
        (operator.imod, operator.mod),
        (operator.ipow, operator.pow),
        (operator.ilshift, operator.lshift),
        (operator.irshift, operator.rshift),
        (operator.iand, operator.and_),
        (operator.ior, operator.or_),
        (operator.ixor, operator.xor),
    ],
    ids=lambda op: op.__name__,
)
def test_inplace_operators_return_plain_value(
    iop: Callable[[Any, Any], Any], op: Callable[[Any, Any], Any]
) -> None:
    result = iop(done(13), done(3))
    assert result == op(13, 3)
    assert not isinstance(result, SmartFuture)


def test_inplace_statement_rebinds_to_value_and_mutates_mutable() -> None:
    x: Any = done(1)
    x += 1
    assert x == 2 and type(x) is int
    items = [1]
    y: Any = done(items)
    y += [2]
    assert y is items and items == [1, 2]


def test_matmul_all_sides() -> None:
    m = np.array([[1, 2], [3, 4]])
    expected = m @ m
    assert (done(m) @ m == expected).all()
    assert (m @ done(m) == expected).all()
    assert (done(m) @ done(m) == expected).all()
    acc: Any = done(m.copy())
    acc @= m
    assert isinstance(acc, np.ndarray) and (acc == expected).all()


def test_pow_three_args_and_reflected() -> None:
    assert pow(done(3), 4, 5) == pow(3, 4, 5)
    assert pow(done(3), done(4), done(5)) == pow(3, 4, 5)
    assert 2 ** done(3) == 8
    assert done(2) ** done(3) == 8


def test_unary_and_rounding() -> None:
    assert -done(3) == -3
    assert +done(-3) == -3
    assert abs(done(-3)) == 3
    assert ~done(3) == ~3
    assert round(done(2.567)) == 3
    assert round(done(2.567), 1) == 2.6
    assert math.trunc(done(-2.5)) == -2
    assert math.floor(done(2.5)) == 2
    assert math.ceil(done(2.5)) == 3


def test_comparisons_and_hash() -> None:
    three = done(3)
    assert three == 3 and three == done(3)
    assert 3 == three  # noqa: SIM300 - reflected on purpose
    assert three != 4 and (three != done(3)) is False
    assert three < 4 and three <= 3 and three > 2 and three >= 3
    assert 2 < three and 4 >= three  # noqa: SIM300 - reflected on purpose
    assert done(2) < three
    # Identity hashing (never waits): a SmartFuture is its own dict key.
    assert hash(three) == hash(three) and hash(three) != hash(done(3))
    table: dict[Any, str] = {three: "x"}
    assert table[three] == "x" and 3 not in table
    assert {3: "y"}[three.value] == "y"
    assert sorted([done(3), done(1), done(2)]) == [1, 2, 3]


def test_conversions() -> None:
    assert bool(done(0)) is False and bool(done([1])) is True
    assert str(done(42)) == "42"
    assert f"{done(3.14159):.2f}" == "3.14"
    assert format(done(255), "x") == "ff"
    assert bytes(done(b"ab")) == b"ab"
    assert int(done(4.7)) == 4 and float(done(2)) == 2.0 and complex(done(2.5)) == 2.5
    assert int(done(True)) == 1 and float(done(Fraction(1, 4))) == 0.25
    assert complex(done(1 + 2j)) == 1 + 2j
    assert [10, 20, 30][done(1)] == 20
    assert operator.index(done(5)) == 5
    assert math.sqrt(done(16)) == 4.0


def test_container_protocols() -> None:
    data = done({"a": 1, "b": 2})
    assert len(data) == 2
    assert sorted(data) == ["a", "b"]
    assert "a" in data and done("a") in data and "z" not in data
    assert data["a"] == 1 and data[done("b")] == 2
    data["c"] = 3
    assert data.value["c"] == 3
    del data["a"]
    assert "a" not in data.value
    seq = done([1, 2, 3])
    assert list(reversed(seq)) == [3, 2, 1]
    assert seq[1:] == [2, 3]
    a, b, c = seq
    assert (a, b, c) == (1, 2, 3)


def test_setitem_stores_smart_future_as_is() -> None:
    inner = done(1)
    box = done({})
    box["k"] = inner
    assert box.value["k"] is inner


def test_call_forwards() -> None:
    sf = done(lambda x, *, y: x + y)
    assert sf(1, y=2) == 3


def raise_key_error() -> None:
    raise KeyError("x")


def test_context_manager_forwards() -> None:
    events: list[Any] = []

    class CM:
        def __enter__(self) -> str:
            events.append("enter")
            return "entered"

        def __exit__(self, *exc: object) -> bool:
            events.append(exc[0])
            return True  # suppress

    with done(CM()) as value:
        assert value == "entered"
        raise_key_error()
    assert events == ["enter", KeyError]
    with pytest.raises(TypeError, match="context manager"), done(3):
        pass


def test_attribute_forwarding() -> None:
    obj = SimpleNamespace(x=1, done="value-done")
    sf = done(obj)
    assert sf.x == 1
    sf.y = 2
    assert obj.y == 2
    del sf.x
    assert not hasattr(obj, "x")
    with pytest.raises(AttributeError):
        _ = sf.missing
    # Future-API names refer to the future, not the value.
    assert sf.done() is True
    assert sf.value.done == "value-done"
    assert "y" in dir(sf) and "result" in dir(sf)
    assert done("s").upper() == "S"


def test_dunder_assignment_not_forwarded() -> None:
    obj = SimpleNamespace()
    sf = done(obj)
    with pytest.raises(AttributeError):
        sf.__custom__ = 1
    assert not hasattr(obj, "__custom__")


def test_future_slot_assignment_is_local() -> None:
    sf = done(1)
    other: Future[int] = Future()
    other.set_result(2)
    sf.future = other
    assert sf == 2


def test_dir_of_failed_future_lists_own_names() -> None:
    names = dir(failed(ValueError()))
    assert "result" in names and "future" in names


def test_exception_reraised_on_every_use() -> None:
    sf = failed(ValueError("boom"))
    uses: list[Callable[[], Any]] = [
        lambda: sf + 1,
        lambda: 1 + sf,
        lambda: -sf,
        lambda: sf == 1,
        lambda: bool(sf),
        lambda: str(sf),
        lambda: len(sf),
        lambda: sf[0],
        lambda: sf.attr,
        lambda: sf(),
        lambda: pickle.dumps(sf),
    ]
    for use in uses:
        with pytest.raises(ValueError, match="boom"):
            use()


def test_cancelled_raises_on_use() -> None:
    future: Future[int] = Future()
    future.cancel()
    with pytest.raises(CancelledError):
        _ = SmartFuture(future) + 1


@pytest.mark.timeout(30)
def test_use_blocks_until_value_ready(pool: ThreadPoolExecutor) -> None:
    release = threading.Event()
    sf = SmartFuture(pool.submit(lambda: release.wait(WAIT) and 5))
    threading.Thread(target=release.set).start()
    assert sf * 2 == 10


# ----------------------------------------------------------------------
# repr
# ----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_repr_every_state_without_blocking(pool: ThreadPoolExecutor) -> None:
    started, release = threading.Event(), threading.Event()

    def blocked() -> int:
        started.set()
        assert release.wait(WAIT)
        return 42

    running = SmartFuture(pool.submit(blocked))
    pending = SmartFuture(pool.submit(blocked))
    assert started.wait(WAIT)
    t0 = time.monotonic()
    assert repr(running) == "<SmartFuture running>"
    assert repr(pending) == "<SmartFuture pending>"
    assert time.monotonic() - t0 < 1.0
    assert pending.cancel()
    assert repr(pending) == "<SmartFuture cancelled>"
    release.set()
    assert running.result(WAIT) == 42
    assert repr(running) == "<SmartFuture finished: 42>"
    assert repr(failed(ValueError("boom"))) == "<SmartFuture failed: ValueError('boom')>"


def test_repr_truncates_long_values() -> None:
    text = repr(done("x" * 500))
    assert text.startswith("<SmartFuture finished: 'xxx")
    assert text.endswith("...>")
    assert len(text) < 120


def test_repr_survives_broken_value_repr() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert repr(done(Broken())) == "<SmartFuture finished: <unrepresentable Broken: RuntimeError>>"


# ----------------------------------------------------------------------
# asyncio
# ----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_await_does_not_block_loop(pool: ThreadPoolExecutor) -> None:
    release = threading.Event()
    sf = SmartFuture(pool.submit(lambda: release.wait(WAIT) and "ok"))

    async def releaser() -> None:
        await asyncio.sleep(0)
        release.set()  # only runs if awaiting sf left the loop free

    async def main() -> Any:
        task = asyncio.ensure_future(releaser())
        value = await sf
        await task
        return value

    assert asyncio.run(main()) == "ok"


def test_await_raises_task_exception() -> None:
    async def main() -> Any:
        return await failed(ValueError("boom"))

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(main())


# ----------------------------------------------------------------------
# pickling and copying
# ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "dumps,loads", [(pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)]
)
def test_pickle_gives_value(dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any]) -> None:
    assert loads(dumps(done(42))) == 42
    restored = loads(dumps(done({"a": [1, 2]})))
    assert restored == {"a": [1, 2]} and type(restored) is dict
    sf = done([1])
    pair = loads(dumps([sf, sf]))
    assert pair == [[1], [1]] and pair[0] is pair[1]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_every_protocol(protocol: int) -> None:
    assert pickle.loads(pickle.dumps(done(1.5), protocol=protocol)) == 1.5


def test_copy_gives_copy_of_value() -> None:
    value = [[1], 2]
    shallow: Any = copy.copy(done(value))
    assert shallow == value and shallow is not value and shallow[0] is value[0]
    deep: Any = copy.deepcopy(done(value))
    assert deep == value and deep[0] is not value[0]


# ----------------------------------------------------------------------
# numpy interoperability
# ----------------------------------------------------------------------


def test_numpy_ufuncs_see_value() -> None:
    arr = np.array([1, 2, 3])
    result = arr + done(1)
    assert isinstance(result, np.ndarray) and result.dtype == arr.dtype
    assert (result == [2, 3, 4]).all()
    assert np.sqrt(done(4.0)) == 2.0
    assert (np.add(done(arr), done(arr)) == arr * 2).all()


# ----------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sliced", [False, True], ids=["blocking", "sliced"])
def test_ctrl_c_in_result_cancels_and_calls_hooks(
    default_sigint: None, monkeypatch: pytest.MonkeyPatch, sliced: bool
) -> None:
    if sliced:
        monkeypatch.setattr(_interrupt, "WAIT_SLICE", 0.01)
    waited: Future[int] = Future()
    calls: list[str] = []
    unregister = register_interrupt_hook(lambda: calls.append("hook"))
    try:
        thread = interrupt_main_when_blocked(
            "wait", SmartFuture.result.__code__, lambda: waited.set_result(0)
        )
        with pytest.raises(KeyboardInterrupt):
            SmartFuture(waited).result()
        thread.join(WAIT)
    finally:
        unregister()
    assert waited.cancelled()
    assert calls == ["hook"]


@pytest.mark.timeout(30)
def test_ctrl_c_in_operator_use_does_not_cancel_running(default_sigint: None) -> None:
    waited: Future[int] = Future()
    assert waited.set_running_or_notify_cancel()
    calls: list[str] = []
    unregister = register_interrupt_hook(lambda: calls.append("hook"))
    try:
        thread = interrupt_main_when_blocked(
            "wait", SmartFuture.result.__code__, lambda: waited.set_result(0)
        )
        with pytest.raises(KeyboardInterrupt):
            _ = SmartFuture(waited) + 1
        thread.join(WAIT)
    finally:
        unregister()
    assert waited.running() and not waited.cancelled()
    assert calls == ["hook"]
    waited.set_result(1)


def test_interrupt_hook_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def bad() -> None:
        raise RuntimeError("hook broke")

    unregister_bad = register_interrupt_hook(bad)
    unregister_good = register_interrupt_hook(lambda: calls.append("good"))
    pending: Future[int] = Future()
    try:
        with caplog.at_level(logging.ERROR, logger="smart_future"):
            _interrupt.notify_interrupted([pending])
    finally:
        unregister_bad()
        unregister_good()
    assert pending.cancelled()
    assert calls == ["good"]
    assert "hook broke" in caplog.text


def test_unregister_interrupt_hook() -> None:
    calls: list[str] = []
    unregister = register_interrupt_hook(lambda: calls.append("x"))
    unregister()
    unregister()  # idempotent
    _interrupt.notify_interrupted([])
    assert calls == []


def test_register_interrupt_hook_rejects_non_callable() -> None:
    with pytest.raises(TypeError):
        register_interrupt_hook(3)  # type: ignore[arg-type]


def test_task_raising_keyboard_interrupt_does_not_run_hooks() -> None:
    calls: list[str] = []
    unregister = register_interrupt_hook(lambda: calls.append("x"))
    try:
        with pytest.raises(KeyboardInterrupt):
            failed(KeyboardInterrupt()).result()
    finally:
        unregister()
    assert calls == []


# ----------------------------------------------------------------------
# Package surface
# ----------------------------------------------------------------------


def test_public_api() -> None:
    assert set(smart_future.__all__) == {
        "SmartFuture",
        "StoppableFuture",
        "register_interrupt_hook",
        "wait_all",
        "wait_any",
        "register_status_provider",
    }
    assert any(
        isinstance(h, logging.NullHandler) for h in logging.getLogger("smart_future").handlers
    )


def test_does_not_import_parallelize() -> None:
    import subprocess

    code = "import sys, smart_future; assert 'parallelize' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_repo_root()))


def _repo_root() -> Any:
    from pathlib import Path

    return Path(smart_future.__file__).resolve().parent.parent


def test_notebook_display_hooks_do_not_block() -> None:
    # IPython looks these up to display a cell's result; a pending future must not block.
    sf: SmartFuture[int] = SmartFuture(Future())
    assert not hasattr(sf, "_repr_html_")
    assert not hasattr(sf, "_ipython_display_")
    assert "pending" in repr(sf)
