"""Opt-in retries of application errors, the same for every method.

``@parallelize(retries=N, retry_on=(ConnectionError, ...), retry_backoff=B)``: when an
attempt fails with an instance of ``retry_on`` and retries remain, the call is
submitted again after ``B * 2**k`` seconds (k = 0 for the first retry, then 1, 2, ...),
asking the executor to avoid the hosts where earlier attempts failed (``avoid_hosts``,
from :func:`where_ran`; REMOTE sets it). The caller holds one future across attempts
(:class:`AttemptsFuture`). The final exception, success aside, carries the earlier
failures: one ``__notes__`` line each, and ``retry_history`` (the earlier exceptions).

Attempts are re-submitted from the thread that completes the failed attempt (backoff
0, as chained calls are) or from the timer thread (backoff > 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, InvalidStateError
from typing import Any

from smart_future import StoppableFuture

from ._call_options import CallOptions
from ._errors import where_ran
from ._executor_base import BaseExecutor
from ._timer import call_later

__all__ = ["AttemptsFuture", "submit_attempt", "submit_retrying"]


class AttemptsFuture(StoppableFuture[Any]):
    """The caller's future of a call that runs as one attempt after another.

    It stays PENDING itself; ``running()`` reports whether the current attempt runs.
    ``cancel()`` keeps the standard semantics (refused while an attempt runs);
    ``stop()`` (what ``SmartFuture.cancel()`` calls) also stops a running attempt when
    its executor can (its future is a :class:`StoppableFuture`); a running THREAD
    attempt cannot be stopped, so ``stop()`` refuses it as ``cancel()`` does.
    Cancelling this future cancels (or stops) the current attempt.
    """

    def __init__(self) -> None:
        super().__init__()
        self._attempt: Future[Any] | None = None
        self.add_done_callback(_propagate_cancel)

    def set_attempt(self, attempt: Future[Any]) -> None:
        """Follow *attempt* from now on (stopping it if this future was cancelled meanwhile)."""
        self._attempt = attempt
        if self.cancelled():
            _stop(attempt)

    def running(self) -> bool:
        attempt = self._attempt
        return not self.done() and attempt is not None and attempt.running()

    def cancel(self) -> bool:
        attempt = self._attempt
        if attempt is not None and attempt.running():
            return False
        return Future.cancel(self)

    def stop(self) -> bool:
        attempt = self._attempt
        if attempt is not None and not isinstance(attempt, StoppableFuture) and attempt.running():
            return False
        return Future.cancel(self) or self.cancelled()

    def settle_from(self, done: Future[Any]) -> None:
        """Copy a finished attempt's outcome (cancelled -> cancelled)."""
        if done.cancelled():
            Future.cancel(self)
            return
        exc = done.exception()
        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
            if exc is not None:
                self.set_exception(exc)
            else:
                self.set_result(done.result())


def _stop(attempt: Future[Any]) -> None:
    if isinstance(attempt, StoppableFuture):
        attempt.stop()
    else:
        attempt.cancel()


def _propagate_cancel(outer: Future[Any]) -> None:
    if outer.cancelled():
        attempt = getattr(outer, "_attempt", None)
        if attempt is not None:
            _stop(attempt)


def submit_attempt(
    executor: Executor,
    options: CallOptions,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Future[Any]:
    """Submit one attempt: through ``submit_with`` when options ask for anything."""
    if isinstance(executor, BaseExecutor) and not options.for_executor().is_default:
        return executor.submit_with(options.for_executor(), fn, *args, **kwargs)
    return executor.submit(fn, *args, **kwargs)


def submit_retrying(
    executor: Executor,
    options: CallOptions,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Future[Any]:
    """Submit a call that is re-run on the errors of ``options.retry_on``.

    The first attempt is submitted here, so an error submitting it (a call that
    cannot be pickled, a shut-down executor) is raised to the caller.
    """
    first = submit_attempt(executor, options, fn, args, kwargs)
    outer = AttemptsFuture()
    _Retrier(executor, options, fn, args, kwargs, outer).follow(first)
    return outer


class _Retrier:
    """The state of one retried call; touched by one completing thread at a time."""

    def __init__(
        self,
        executor: Executor,
        options: CallOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        outer: AttemptsFuture,
    ) -> None:
        self.executor = executor
        self.options = options
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.outer = outer
        self.failures: list[BaseException] = []
        self.lock = threading.Lock()  # only guards `failures` against a racing callback

    def follow(self, attempt: Future[Any]) -> None:
        self.outer.set_attempt(attempt)
        attempt.add_done_callback(self._attempt_done)

    def _attempt_done(self, attempt: Future[Any]) -> None:
        outer = self.outer
        if outer.done():
            return
        if attempt.cancelled():
            outer.settle_from(attempt)
            return
        exc = attempt.exception()
        if exc is None:
            outer.settle_from(attempt)
            return
        retry_number = 0
        with self.lock:
            retry = (
                isinstance(exc, self.options.retry_on) and len(self.failures) < self.options.retries
            )
            if not retry:
                _annotate(exc, self.failures, self.options.retries)
            else:
                self.failures.append(exc)
                retry_number = len(self.failures)
        if not retry:
            outer.settle_from(attempt)
            return
        host = where_ran(exc)
        if host is not None:
            self.options = dataclasses.replace(
                self.options, avoid_hosts=self.options.avoid_hosts | {host}
            )
        delay = self.options.retry_backoff * 2 ** (retry_number - 1)
        if delay > 0:
            call_later(delay, self._resubmit)
        else:
            self._resubmit()

    def _resubmit(self) -> None:
        if self.outer.done():
            return
        try:
            attempt = submit_attempt(self.executor, self.options, self.fn, self.args, self.kwargs)
        except BaseException as exc:
            with self.lock:
                _annotate(exc, self.failures, self.options.retries)
            with contextlib.suppress(InvalidStateError):
                self.outer.set_exception(exc)
            return
        self.follow(attempt)


def _annotate(exc: BaseException, failures: list[BaseException], retries: int) -> None:
    """Record the earlier failed attempts on the final exception."""
    earlier = tuple(f for f in failures if f is not exc)
    if not failures:
        return
    for number, failure in enumerate(earlier, start=1):
        host = where_ran(failure)
        where = f" on host {host}" if host else ""
        _add_note(
            exc,
            f"attempt {number} of {retries + 1} failed{where}: {type(failure).__name__}: {failure}",
        )
    # An exception type with __slots__ refuses the attribute: the notes still tell.
    with contextlib.suppress(AttributeError):
        exc.retry_history = earlier  # type: ignore[attr-defined]


def _add_note(exc: BaseException, note: str) -> None:
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:  # Python 3.11+
        add_note(note)
        return
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        exc.__notes__ = notes  # type: ignore[attr-defined]
    notes.append(note)
