"""Type-checked, never run: each line marked ``# error: <code>`` must be reported by mypy.

tests/test_typing.py checks that mypy --strict reports an error on exactly
the marked lines (and pyright, when available, on the same lines).
"""

from __future__ import annotations

from parallelize import Method, parallelize
from smart_future import wait_all


@parallelize
def f(x: int) -> str:
    return str(x)


@parallelize(method=Method.PROCESS)
def g(x: int) -> int:
    return x


class Model:
    @parallelize
    def method(self, x: int) -> int:
        return x


def check() -> None:
    f("not an int")  # error: arg-type
    g(1, 2)  # error: call-arg
    n: int = f(1).result()  # error: assignment
    Model().method("x")  # error: arg-type
    wait_all([f(1)], progress="sometimes")  # error: arg-type
    f.options(timout=1)  # error: call-arg
    f.options(timeout=1)("x")  # error: arg-type
    f.map([1], chunksize="auto")  # error: arg-type
    m: list[int] = f.map([1])  # error: assignment
    print(n, m)
