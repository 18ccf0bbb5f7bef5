"""Decorated functions in an importable module, for tests/test_promises.py."""

from __future__ import annotations

from parallelize import Method, parallelize


@parallelize(method=Method.PROCESS)
def square(x: int) -> int:
    return x * x


@parallelize(method=Method.PROCESS)
def fail(x: int) -> None:
    raise ValueError(f"failing on purpose with {x}")


@parallelize
def threaded_double(x: int) -> int:
    return 2 * x


class Scaler:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    @parallelize(method=Method.PROCESS)
    def scale(self, x: int) -> int:
        return self.factor * x
