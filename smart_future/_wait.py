"""Waiting for many futures: wait_any() and wait_all().

Both accept any iterable of SmartFuture or plain ``concurrent.futures.Future``
objects (plain futures are wrapped in a new SmartFuture) and cost O(n) in
total: every future reports its completion through a done-callback to one
shared queue, so waiting does not rescan the pending set.

Neither function raises a task's exception.  A task that failed is logged at
ERROR level on the ``smart_future`` logger, with its traceback, when its
future is yielded (``log_exceptions=False`` turns this off); the exception is
raised when ``result()`` is called on that future.

``progress=True`` shows a ``tqdm.auto`` bar while waiting (see
:mod:`smart_future._progress`); with progress off (the default) the waiting
loop is the plain one, with no per-completion overhead.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, NamedTuple, TypeAlias, TypeVar

from smart_future import _interrupt, _progress
from smart_future._progress import ProgressOption
from smart_future._smart_future import SmartFuture, remove_callbacks

__all__ = ["wait_all", "wait_any"]

_logger = logging.getLogger("smart_future")

T = TypeVar("T")

AnyFuture: TypeAlias = SmartFuture[T] | Future[T]


class _ProgressSpec(NamedTuple):
    desc: str | None


def _progress_spec(progress: object, desc: str | None) -> _ProgressSpec | None:
    return _ProgressSpec(desc) if _progress.wants_progress(progress) else None


def _as_smart(futures: Iterable[AnyFuture[T]], caller: str) -> list[SmartFuture[T]]:
    """Wrap ``futures`` in SmartFutures, one per input element, in order.

    Inputs sharing an inner future map to the same SmartFuture object (the
    first one seen).
    """
    if isinstance(futures, (SmartFuture, Future)):
        # A SmartFuture is iterable when its value is; refuse the ambiguity.
        raise TypeError(f"{caller}() expects an iterable of futures, not a single future")
    seen: dict[Future[T], SmartFuture[T]] = {}
    out: list[SmartFuture[T]] = []
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


class _Failures:
    """Failed tasks seen by one wait: logged, and summed up on stderr if logging shows nothing.

    The loggers have only a NullHandler until the application configures
    logging, so "logged at ERROR" alone would let failures pass silently in a
    plain script. When no handler would show the records, one summary line
    goes to stderr when the wait ends.
    """

    __slots__ = ("count", "first", "interrupted", "log", "total")

    def __init__(self, log: bool, total: int) -> None:
        self.log = log
        self.total = total
        self.count = 0
        self.first: BaseException | None = None
        self.interrupted = False

    def check(self, sf: SmartFuture[Any]) -> None:
        if not self.log:
            return
        future = sf.future
        if future.cancelled():
            return
        exc = future.exception(0)
        if exc is None:
            return
        self.count += 1
        if self.first is None:
            self.first = exc
        _logger.error("Task failed: %r", sf, exc_info=exc)

    def summarise(self) -> None:
        if not self.count or self.interrupted or _logging_shows_errors():
            return
        first = self.first
        print(
            f"smart_future: {self.count} of {self.total} tasks failed (first: "
            f"{type(first).__name__}: {first}). .result() raises a task's exception; "
            "configure logging (e.g. logging.basicConfig()) to see each traceback, or pass "
            "log_exceptions=False to say nothing.",
            file=sys.stderr,
            flush=True,
        )


def _logging_shows_errors() -> bool:
    """Whether an ERROR record of the ``smart_future`` logger reaches a real handler."""
    if not _logger.isEnabledFor(logging.ERROR):
        return True  # the application turned these records off: respect it
    logger: logging.Logger | None = _logger
    while logger is not None:
        for handler in logger.handlers:
            if not isinstance(handler, logging.NullHandler) and handler.level <= logging.ERROR:
                return True
        if not logger.propagate:
            break
        logger = logger.parent
    return False


def _format_timeout(timeout: float) -> str:
    return f"{timeout:g}"


def _completed(
    futures: list[SmartFuture[T]],
    timeout: float | None,
    callback: Callable[[SmartFuture[T]], object] | None,
    log_exceptions: bool,
    progress: _ProgressSpec | None = None,
) -> Iterator[SmartFuture[T]]:
    """Register done-callbacks now; return the generator yielding completions.

    ``progress`` is None for no bar, else the settings of the bar to show.
    """
    done_queue: queue.SimpleQueue[Future[T]] = queue.SimpleQueue()
    by_inner = {sf.future: sf for sf in futures}
    deadline = None if timeout is None else time.monotonic() + timeout
    # Already-finished futures call back immediately, so they come first, in
    # input order; the rest in the order they finish.
    put = done_queue.put  # one object, so that it can be removed again by identity
    for inner in by_inner:
        inner.add_done_callback(put)
    failures = _Failures(log_exceptions, len(by_inner))
    if progress is not None:
        return _drain_with_progress(
            done_queue, by_inner, timeout, deadline, callback, failures, put, progress
        )
    return _drain(done_queue, by_inner, timeout, deadline, callback, failures, put)


def _forget(pending: Iterable[Future[Any]], put: Callable[[Any], None]) -> None:
    """Remove this wait's callback from the futures it no longer waits for."""
    for inner in pending:
        remove_callbacks(inner, lambda cb: cb is put)


def _drain(
    done_queue: queue.SimpleQueue[Future[T]],
    pending: dict[Future[T], SmartFuture[T]],
    timeout: float | None,
    deadline: float | None,
    callback: Callable[[SmartFuture[T]], object] | None,
    failures: _Failures,
    put: Callable[[Any], None],
) -> Iterator[SmartFuture[T]]:
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
            failures.check(sf)
            if callback is not None:
                callback(sf)
            yield sf
    except KeyboardInterrupt:
        failures.interrupted = True  # the user wants out: no summary now
        _interrupt.notify_interrupted(list(pending))
        raise
    finally:
        _forget(pending, put)
        failures.summarise()


def _drain_with_progress(
    done_queue: queue.SimpleQueue[Future[T]],
    pending: dict[Future[T], SmartFuture[T]],
    timeout: float | None,
    deadline: float | None,
    callback: Callable[[SmartFuture[T]], object] | None,
    failures: _Failures,
    put: Callable[[Any], None],
    progress: _ProgressSpec,
) -> Iterator[SmartFuture[T]]:
    """``_drain`` with a progress bar, closed however the generator ends."""
    total = len(pending)
    bar: _progress.WaitProgress | None = None
    try:
        bar = _progress.WaitProgress(total, progress.desc)
        while pending:
            inner = _next_done_ticking(done_queue, deadline, bar)
            if inner is None:
                assert timeout is not None
                raise TimeoutError(
                    f"{len(pending)} of {total} futures still pending "
                    f"after {_format_timeout(timeout)} s"
                )
            sf = pending.pop(inner)
            bar.task_done(inner)
            failures.check(sf)
            if callback is not None:
                callback(sf)
            yield sf
    except KeyboardInterrupt:
        failures.interrupted = True  # the user wants out: no summary now
        _interrupt.notify_interrupted(list(pending))
        raise
    finally:
        _forget(pending, put)
        if bar is not None:
            bar.close()
        failures.summarise()


def _next_done_ticking(
    done_queue: queue.SimpleQueue[Future[T]], deadline: float | None, bar: _progress.WaitProgress
) -> Future[T] | None:
    """``_next_done`` that wakes to refresh ``bar`` every ``REFRESH_INTERVAL`` seconds."""
    slice_ = _interrupt.WAIT_SLICE
    while True:
        now = time.monotonic()
        bar.tick(now)
        step = max(bar.next_refresh - now, 0.001)
        if slice_ is not None:
            step = min(step, slice_)
        if deadline is not None:
            remaining = deadline - now
            if remaining <= 0:
                try:
                    return done_queue.get_nowait()
                except queue.Empty:
                    return None
            step = min(step, remaining)
        try:
            return done_queue.get(timeout=step)
        except queue.Empty:
            continue


def _next_done(
    done_queue: queue.SimpleQueue[Future[T]], deadline: float | None
) -> Future[T] | None:
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
    futures: Iterable[AnyFuture[T]],
    *,
    callback: Callable[[SmartFuture[T]], object] | None = None,
    log_exceptions: bool = True,
    timeout: float | None = None,
    progress: ProgressOption = False,
    desc: str | None = None,
) -> Iterator[SmartFuture[T]]:
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
        progress: True shows a progress bar (``tqdm.auto``: a widget in
            Jupyter, a bar on stderr elsewhere) counting completions, with
            failed and cancelled counts and the status providers' strings
            (see ``register_status_provider()``) in its postfix.  ``"auto"``
            shows it only when stderr is a terminal or in a Jupyter kernel.
            False (the default) shows nothing.  The bar opens on the first
            ``next()`` and closes when iteration ends, fails, times out or the
            iterator is closed.
        desc: The progress bar's label.

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
        ValueError: if ``progress`` is not True, False or ``"auto"``.

    Task exceptions are never raised here; call ``result()`` on the yielded
    future to get the value or the exception.
    """
    spec = _progress_spec(progress, desc)
    return _completed(_as_smart(futures, "wait_any"), timeout, callback, log_exceptions, spec)


def wait_all(
    futures: Iterable[AnyFuture[T]],
    *,
    log_exceptions: bool = True,
    timeout: float | None = None,
    progress: ProgressOption = False,
    desc: str | None = None,
) -> list[SmartFuture[T]]:
    """Wait until all the given futures complete; return them in input order.

    Args:
        futures: An iterable of SmartFuture or ``concurrent.futures.Future``
            objects (plain Futures are returned wrapped in a SmartFuture).
        log_exceptions: If true, each failed task is logged at ERROR level on
            the ``smart_future`` logger with its traceback.
        timeout: Maximum number of seconds to wait; None waits without limit.
        progress: True shows a progress bar while waiting, ``"auto"`` only
            when stderr is a terminal or in a Jupyter kernel; as for
            ``wait_any()``.  The bar is closed before this returns or raises.
        desc: The progress bar's label.

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
        ValueError: if ``progress`` is not True, False or ``"auto"``.

    Task exceptions are never raised here: check ``exception()`` or call
    ``result()`` on the returned futures.
    """
    spec = _progress_spec(progress, desc)
    smart = _as_smart(futures, "wait_all")
    completions = _completed(smart, timeout, None, log_exceptions, spec)
    try:
        for _ in completions:
            pass
    finally:
        # Close the bar now, not when the generator is collected.
        if spec is not None and isinstance(completions, Generator):
            completions.close()
    return smart
