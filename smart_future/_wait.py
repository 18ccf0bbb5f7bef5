"""Waiting for many futures: wait_any() and wait_all().

Both accept any iterable of SmartFuture or plain ``concurrent.futures.Future``
objects (plain futures are wrapped in a new SmartFuture) and cost O(n) in
total: every future reports its completion through a done-callback to one
shared queue, so waiting does not rescan the pending set.

Neither function raises a task's exception.  A task that failed is logged at
ERROR level on the ``smart_future`` logger, with its traceback, when its
future is yielded (``log_exceptions=False`` turns this off); the exception is
raised when ``result()`` is called on that future.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, TypeAlias

from smart_future import _interrupt
from smart_future._smart_future import SmartFuture

__all__ = ["wait_all", "wait_any"]

_logger = logging.getLogger("smart_future")

AnyFuture: TypeAlias = SmartFuture[Any] | Future[Any]


def _as_smart(futures: Iterable[AnyFuture], caller: str) -> list[SmartFuture[Any]]:
    """Wrap ``futures`` in SmartFutures, one per input element, in order.

    Inputs sharing an inner future map to the same SmartFuture object (the
    first one seen).
    """
    if isinstance(futures, (SmartFuture, Future)):
        # A SmartFuture is iterable when its value is; refuse the ambiguity.
        raise TypeError(f"{caller}() expects an iterable of futures, not a single future")
    seen: dict[Future[Any], SmartFuture[Any]] = {}
    out: list[SmartFuture[Any]] = []
    for item in futures:
        if isinstance(item, SmartFuture):
            inner = item.future
        elif isinstance(item, Future):
            inner = item
        else:
            raise TypeError(
                f"{caller}() expects SmartFuture or concurrent.futures.Future objects, "
                f"not {type(item).__name__}"
            )
        sf = seen.get(inner)
        if sf is None:
            sf = item if isinstance(item, SmartFuture) else SmartFuture(inner)
            seen[inner] = sf
        out.append(sf)
    return out


def _log_failure(sf: SmartFuture[Any]) -> None:
    future = sf.future
    if future.cancelled():
        return
    exc = future.exception(0)
    if exc is not None:
        _logger.error("Task failed: %r", sf, exc_info=exc)


def _format_timeout(timeout: float) -> str:
    return f"{timeout:g}"


def _completed(
    futures: list[SmartFuture[Any]],
    timeout: float | None,
    callback: Callable[[SmartFuture[Any]], object] | None,
    log_exceptions: bool,
) -> Iterator[SmartFuture[Any]]:
    """Register done-callbacks now; return the generator yielding completions."""
    done_queue: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
    by_inner = {sf.future: sf for sf in futures}
    deadline = None if timeout is None else time.monotonic() + timeout
    # Already-finished futures call back immediately, so they come first, in
    # input order; the rest in the order they finish.
    for inner in by_inner:
        inner.add_done_callback(done_queue.put)
    return _drain(done_queue, by_inner, timeout, deadline, callback, log_exceptions)


def _drain(
    done_queue: queue.SimpleQueue[Future[Any]],
    pending: dict[Future[Any], SmartFuture[Any]],
    timeout: float | None,
    deadline: float | None,
    callback: Callable[[SmartFuture[Any]], object] | None,
    log_exceptions: bool,
) -> Iterator[SmartFuture[Any]]:
    total = len(pending)
    try:
        while pending:
            inner = _next_done(done_queue, deadline)
            if inner is None:
                assert timeout is not None
                raise TimeoutError(
                    f"{len(pending)} of {total} futures still pending "
                    f"after {_format_timeout(timeout)} s"
                )
            sf = pending.pop(inner)
            if log_exceptions:
                _log_failure(sf)
            if callback is not None:
                callback(sf)
            yield sf
    except KeyboardInterrupt:
        _interrupt.notify_interrupted(list(pending))
        raise


def _next_done(
    done_queue: queue.SimpleQueue[Future[Any]], deadline: float | None
) -> Future[Any] | None:
    """Next finished future from the queue, or None once ``deadline`` passes."""
    slice_ = _interrupt.WAIT_SLICE
    while True:
        step: float | None = slice_
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                try:
                    return done_queue.get_nowait()
                except queue.Empty:
                    return None
            step = remaining if step is None else min(step, remaining)
        try:
            return done_queue.get(timeout=step)
        except queue.Empty:
            continue


def wait_any(
    futures: Iterable[AnyFuture],
    *,
    callback: Callable[[SmartFuture[Any]], object] | None = None,
    log_exceptions: bool = True,
    timeout: float | None = None,
) -> Iterator[SmartFuture[Any]]:
    """Yield the given futures as they complete (finish or are cancelled).

    Args:
        futures: An iterable of SmartFuture or ``concurrent.futures.Future``
            objects.  A plain Future is yielded wrapped in a new SmartFuture;
            a SmartFuture is yielded as itself.  Duplicates (by inner future)
            are yielded once.
        callback: If given, ``callback(sf)`` is called for each future just
            before it is yielded; its exceptions propagate.
        log_exceptions: If true, each failed task is logged at ERROR level on
            the ``smart_future`` logger with its traceback when yielded.
        timeout: Maximum total number of seconds to wait, counted from this
            call.  None (the default) waits without limit.

    Returns:
        An iterator over the futures in completion order; futures already
        done when ``wait_any()`` is called come first, in input order.
        Iterating blocks until the next future completes.

    Raises:
        TimeoutError: (from iteration) if not all futures completed within
            ``timeout``; its message says how many are still pending.
        KeyboardInterrupt: (from iteration) on Ctrl-C; the pending futures
            that have not started are cancelled and the interrupt hooks run
            before it propagates.
        TypeError: if ``futures`` is a single future or contains objects
            that are not futures.

    Task exceptions are never raised here; call ``result()`` on the yielded
    future to get the value or the exception.
    """
    return _completed(_as_smart(futures, "wait_any"), timeout, callback, log_exceptions)


def wait_all(
    futures: Iterable[AnyFuture],
    *,
    log_exceptions: bool = True,
    timeout: float | None = None,
) -> list[SmartFuture[Any]]:
    """Wait until all the given futures complete; return them in input order.

    Args:
        futures: An iterable of SmartFuture or ``concurrent.futures.Future``
            objects (plain Futures are returned wrapped in a SmartFuture).
        log_exceptions: If true, each failed task is logged at ERROR level on
            the ``smart_future`` logger with its traceback.
        timeout: Maximum number of seconds to wait; None waits without limit.

    Returns:
        A list with one SmartFuture per input element, in input order (inputs
        sharing an inner future give the same SmartFuture).  Every future in
        it is done.

    Raises:
        TimeoutError: if not all futures completed within ``timeout``; its
            message says how many are still pending.
        KeyboardInterrupt: on Ctrl-C; the pending futures that have not
            started are cancelled and the interrupt hooks run first.
        TypeError: as for ``wait_any()``.

    Task exceptions are never raised here: check ``exception()`` or call
    ``result()`` on the returned futures.
    """
    smart = _as_smart(futures, "wait_all")
    for _ in _completed(smart, timeout, None, log_exceptions):
        pass
    return smart
