"""What type checkers see of a decorated function: :class:`ParallelFunction`.

Only for type checkers: at run time the decorator returns wrapt's wrapper (see
``_decorator``), which has these methods. ``__get__`` binds the first parameter when
a decorated method is read from an instance (and a class method's ``cls`` from either),
so ``obj.method(x)`` type-checks as the call without ``self``.

Known limits of the checkers (the README says so): neither tells a static method from
a function whose first parameter accepts the instance, and mypy does not check the
``self`` type of ``__get__`` overloads; so mypy binds the first parameter of a static
method read from an instance, and both leave a class method read from the class
unbound (call it on an instance, or ignore the error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from smart_future import SmartFuture

from ._method import Method

__all__ = ["ParallelFunction"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
S = TypeVar("S")


class ParallelFunction(Protocol[P, R]):
    """A function decorated with ``@parallelize``: calls return SmartFutures."""

    @property
    def __wrapped__(self) -> Callable[P, R]: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> SmartFuture[R]: ...

    def map(
        self, iterable: Iterable[Any], /, *iterables: Iterable[Any], chunksize: int | None = None
    ) -> list[SmartFuture[R]]:
        """One call per item of ``zip(iterable, *iterables)``; one SmartFuture per call."""
        ...

    def options(
        self,
        *,
        method: Method | str = ...,
        timeout: float | None = ...,
        retries: int = ...,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = ...,
        retry_backoff: float = ...,
        backups: bool | None = ...,
    ) -> ParallelFunction[P, R]:
        """This function with other options for the calls made through the result."""
        ...

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> ParallelFunction[P, R]: ...
    @overload
    def __get__(
        self: ParallelFunction[Concatenate[type[S], P2], R], instance: S, owner: type[S], /
    ) -> ParallelFunction[P2, R]: ...
    @overload
    def __get__(
        self: ParallelFunction[Concatenate[S, P2], R], instance: S, owner: type[Any], /
    ) -> ParallelFunction[P2, R]: ...
    @overload
    def __get__(self, instance: object, owner: type[Any], /) -> ParallelFunction[P, R]: ...
