"""The concurrent.futures.Future a cluster engine completes, and the argument translation.

An :class:`EngineFuture` is driven by the engine's own completion events (the
Dask futures' completion, batched ``ray.wait``): ``wait_all``/``wait_any``/progress
see it finish when the engine says so. ``cancel()`` cancels on the engine.
Its value may stay in the cluster until asked for (completed with
``UNFETCHED``): the first ``result()`` then has the owner fetch it (Dask gathers
every finished value not read yet in the same round trip), and keeps it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from smart_future import SmartFuture, StoppableFuture

from ._remote_side import Chained

__all__ = ["UNFETCHED", "EngineFuture", "Owner", "native_arguments"]


class _Unfetched:
    def __repr__(self) -> str:
        return "<value still in the cluster>"


UNFETCHED: Any = _Unfetched()


class Owner(Protocol):
    """What an EngineFuture needs from the executor that created it."""

    def _cancel_call(self, future: EngineFuture) -> None: ...

    def _fetch(self, future: EngineFuture, timeout: float | None = None) -> Any: ...


class EngineFuture(StoppableFuture[Any]):
    """A call's future on a cluster engine; ``engine_future`` is the engine's own future.

    It stays PENDING until the engine reports the outcome (the engines do not say when a
    call starts without a round trip), so ``cancel()`` reaches the engine even for a call
    that runs: Ray then kills the worker running it, Dask forgets the task (its worker
    thread runs on)."""

    def __init__(self, owner: Owner, call_id: int, engine_future: Any) -> None:
        super().__init__()
        self.owner: Owner | None = owner
        self.call_id = call_id
        self.engine_future = engine_future
        self.used_as_argument = False
        self.fetched: Any = UNFETCHED
        # Whether a done-callback was added (await, wait_all, retries): its value is then
        # brought before the future completes, so that the callback reads it at once.
        self.watched = False

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        self.watched = True  # before the callback can run: the owner reads it when finishing
        super().add_done_callback(fn)

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        owner = self.owner
        if owner is not None:
            owner._cancel_call(self)
        return True

    def result(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        value = super().result(timeout)
        if value is UNFETCHED:
            if self.fetched is UNFETCHED:
                owner = self.owner
                if owner is None:  # a bug: only the owner completes a future with UNFETCHED
                    raise RuntimeError(f"call {self.call_id}: its value has no owner to fetch it")
                # The caller's timeout covers the fetch too (a worker holding the value may
                # be slow or frozen).
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                self.fetched = owner._fetch(self, left)
            value = self.fetched
        return value


def native_arguments(
    owner: object, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], bool, Chained | None]:
    """Replace SmartFutures of *owner*'s calls by the engine's futures (the value stays in
    the cluster). Also returns whether other SmartFutures remain (to be waited for), and
    which arguments were replaced (positions, keyword names; None if none was)."""
    for value in itertools.chain(args, kwargs.values()):  # a loop: cheaper than any() here
        if isinstance(value, SmartFuture):
            break
    else:
        return args, kwargs, False, None  # the common case: nothing to convert, nothing copied
    foreign = False

    def convert(value: Any) -> tuple[Any, bool]:
        nonlocal foreign
        if isinstance(value, SmartFuture):
            inner = value.future
            if isinstance(inner, EngineFuture) and inner.owner is owner and not inner.cancelled():
                inner.used_as_argument = True
                return inner.engine_future, True
            foreign = True
        return value, False

    converted_args = [convert(a) for a in args]
    converted_kwargs = {k: convert(v) for k, v in kwargs.items()}
    new_args = tuple(value for value, _ in converted_args)
    new_kwargs = {k: value for k, (value, _) in converted_kwargs.items()}
    positions = tuple(i for i, (_, native) in enumerate(converted_args) if native)
    names = tuple(k for k, (_, native) in converted_kwargs.items() if native)
    chained = (positions, names) if positions or names else None
    return new_args, new_kwargs, foreign, chained
