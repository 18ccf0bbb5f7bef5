"""Turning a decorated call into a SmartFuture, waiting for SmartFuture arguments first.

A call whose (top-level positional or keyword) arguments include SmartFutures
that are not finished is not submitted straight away: the caller gets a
SmartFuture at once, and the call is submitted when every such argument has
finished, with the arguments replaced by their values. If one of them
failed, the call is not run and its future fails with the same exception.
So chains like ``g(f(1))`` never block the caller.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError
from typing import Any

from smart_future import SmartFuture

from ._retry import AttemptsFuture

__all__ = ["Submit", "has_smart_future", "submit_call"]

#: How a resolved call is submitted: ``submit(fn, args, kwargs) -> Future``.
Submit = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], "Future[Any]"]


def submit_call(
    executor: Executor,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    submit: Submit | None = None,
) -> SmartFuture[Any]:
    """Submit ``fn(*args, **kwargs)`` once its SmartFuture arguments have finished.

    *submit* replaces ``executor.submit`` (the decorator passes one that applies
    per-call options and retries).
    """
    if submit is None:
        submit = _plain_submit(executor)
    if not has_smart_future(args, kwargs):
        return SmartFuture(submit(fn, args, kwargs))
    pending = [a for a in args if isinstance(a, SmartFuture)]
    pending.extend(v for v in kwargs.values() if isinstance(v, SmartFuture))
    unfinished = [sf for sf in pending if not sf.done()]
    if not unfinished:
        return _submit_resolved(submit, fn, args, kwargs)
    return _submit_when_ready(submit, fn, args, kwargs, unfinished)


def _plain_submit(executor: Executor) -> Submit:
    def submit(
        fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        return executor.submit(fn, *args, **kwargs)

    return submit


def has_smart_future(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    for value in args:
        if isinstance(value, SmartFuture):
            return True
    if kwargs:
        for value in kwargs.values():
            if isinstance(value, SmartFuture):
                return True
    return False


def _first_failure(args: tuple[Any, ...], kwargs: dict[str, Any]) -> BaseException | None:
    """The exception of the first failed (or cancelled) SmartFuture argument, or None.

    Read with ``exception()``, never raised here: raising would append this
    frame to the dependency's traceback, which every future chained to it shares.
    """
    for value in (*args, *kwargs.values()):
        if isinstance(value, SmartFuture):
            future = value.future
            if future.cancelled():
                return CancelledError(f"an argument of this call was cancelled: {value!r}")
            exc = future.exception(0)
            if exc is not None:
                return exc
    return None


def _resolve(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Replace finished, successful SmartFutures by their values."""
    new_args = tuple(a.future.result(0) if isinstance(a, SmartFuture) else a for a in args)
    new_kwargs = {
        k: (v.future.result(0) if isinstance(v, SmartFuture) else v) for k, v in kwargs.items()
    }
    return new_args, new_kwargs


def _submit_resolved(
    submit: Submit, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> SmartFuture[Any]:
    failure = _first_failure(args, kwargs)
    if failure is not None:
        failed: Future[Any] = Future()
        failed.set_exception(failure)
        return SmartFuture(failed)
    args, kwargs = _resolve(args, kwargs)
    return SmartFuture(submit(fn, args, kwargs))


def _submit_when_ready(
    submit: Submit,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    unfinished: list[SmartFuture[Any]],
) -> SmartFuture[Any]:
    # Stays pending while it waits, then follows the submitted call: running() and
    # cancel() (also SmartFuture.cancel() of a running PROCESS/REMOTE call) act on it.
    outer = AttemptsFuture()
    remaining = [len(unfinished)]
    lock = threading.Lock()

    def on_dependency_done(_: Any) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        if outer.cancelled():
            return
        failure = _first_failure(args, kwargs)
        if failure is not None:
            _set_exception_unless_cancelled(outer, failure)
            return
        try:
            resolved_args, resolved_kwargs = _resolve(args, kwargs)
            inner = submit(fn, resolved_args, resolved_kwargs)
        except BaseException as exc:
            _set_exception_unless_cancelled(outer, exc)
            return
        outer.set_attempt(inner)
        inner.add_done_callback(outer.settle_from)

    for dependency in unfinished:
        dependency.future.add_done_callback(on_dependency_done)
    return SmartFuture(outer)


def _set_exception_unless_cancelled(future: Future[Any], exc: BaseException) -> None:
    if future.done():
        return
    # The future may be cancelled between the check and the set.
    with contextlib.suppress(InvalidStateError):
        future.set_exception(exc)
