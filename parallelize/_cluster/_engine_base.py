"""What the Dask and Ray executors share: per-call options, timeouts, records, lifecycle.

An engine subclass implements ``_start_call`` (hand one call to the engine and
return its :class:`EngineFuture`), ``_expire`` (a timed call ran out of time:
stop it on the engine), ``_live_futures`` and the cancel/fetch hooks of
:class:`EngineFuture`; this base turns per-call options into those calls,
enforces ``timeout=`` with one deadline thread, builds ``stats()`` from attempt
records and the poisoned-call error from lost attempts.

Timeouts: a timed call's deadline counts from the moment the engine says it
started (``_started``: a Dask worker is seen running it, polled every
``_POLL`` seconds while a timed call waits to start, so the deadline may come up
to a poll late; Ray counts from submit, see ``_ray``). At the deadline the call's future fails with
:class:`TaskTimeoutError` and ``_expire`` stops it on the engine.

Threads and locks: ``_lock`` (created here, shared with the subclass) guards the
subclass's call table and ``_timed``; it is never held across a call into the
engine. The deadline thread runs only while timed calls are live.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from .._call_options import DEFAULT_OPTIONS, CallOptions
from .._errors import AttemptRecord, PoisonedCallError, TaskTimeoutError
from .._executor_base import BaseExecutor
from .._pickling import callable_name
from .._records import AttemptRow, HostRow
from .._stats import ExecutorStats, Outcome
from ._engine_future import EngineFuture, native_arguments
from ._remote_side import Chained
from ._speculation import percentile

logger = logging.getLogger("parallelize")

__all__ = ["EngineExecutor", "poisoned_error", "set_outcome"]

_POLL = 0.1  # seconds between looks at the engine while a timed call waits to start


def set_outcome(future: Future[Any], value: Any, exc: BaseException | None = None) -> None:
    """Complete *future* unless it is already done (cancelled by the caller meanwhile)."""
    if future.done():
        return
    try:
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)
    except InvalidStateError:
        pass


def poisoned_error(
    what: str, records: Iterable[tuple[str, float, float]], cause: str
) -> PoisonedCallError:
    """The error of a call (*what*) every attempt of which was lost with its worker.

    *records*: ``(worker, start, end)`` of each lost attempt (start = end = 0 if unknown)."""
    attempts = tuple(
        AttemptRecord(
            host=worker,
            reason="the worker died while running the call",
            duration=(end - start) if end > start else None,
        )
        for worker, start, end in sorted(records, key=lambda r: r[1])
    )
    where = "; ".join(f"attempt {i} {a}" for i, a in enumerate(attempts, 1))
    return PoisonedCallError(
        f"{what} was given up after its worker died {len(attempts)} time(s) ({cause}; "
        f"the call probably kills its worker process): {where}",
        attempts,
    )


@dataclass(eq=False)
class _Timed:
    call_id: int
    future: EngineFuture
    function: str
    timeout: float
    started: float | None = None  # monotonic
    where: str = "the cluster"


class _WithOptions:
    """``submit`` with fixed options: what a call waiting for foreign arguments submits to."""

    def __init__(self, executor: EngineExecutor, options: CallOptions) -> None:
        self._executor = executor
        self._options = options

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._executor.submit_with(self._options, fn, *args, **kwargs)


class EngineExecutor(BaseExecutor):
    """Base of the cluster executors; see the module docstring."""

    passes_smart_futures = True  # the decorator hands SmartFuture arguments to submit()
    supports_timeout = True

    def __init__(self, *, name: str) -> None:
        super().__init__(name=name)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timed: dict[int, _Timed] = {}
        self._timer_wake = threading.Event()
        self._timer: threading.Thread | None = None
        self._wake = threading.Event()  # set when a call that may need a backup arrives
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_interval = 0.25

    # -- backups heartbeat (both engines) ----------------------------------------------

    def _start_heartbeat(self, interval: float) -> None:
        """Look for stragglers every *interval* seconds while calls that may need a backup
        are in flight; sleep on ``_wake`` otherwise (an idle executor costs nothing)."""
        self._heartbeat_interval = interval
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name=f"{self.name}-heartbeat", daemon=True
        )
        self._heartbeat.start()

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                idle = not self._may_need_backup()
            if idle:
                self._wake.wait()
                self._wake.clear()
                continue
            if self._stop.wait(self._heartbeat_interval):
                return
            try:
                self._consider_backup()
            except Exception:  # the engine is closing or its scheduler is away: try later
                logger.debug("%s: heartbeat failed", self.name, exc_info=True)

    def _may_need_backup(self) -> bool:
        """Whether a call in flight may get a backup copy (called under ``_lock``)."""
        return False

    def _consider_backup(self) -> None:
        """Start a backup copy of the worst straggler, if one is worth it."""

    # -- submitting -------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._submit(DEFAULT_OPTIONS, fn, args, kwargs)

    def submit_with(
        self, options: CallOptions, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        """Submit with per-call options: ``timeout`` (see the module docstring) and
        ``backups=False`` (no speculative copy of this call); retries are the decorator's."""
        return self._submit(options.for_executor(), fn, args, kwargs)

    def _submit(
        self,
        options: CallOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[Any]:
        self._check_open()
        args, kwargs, foreign, chained = native_arguments(self, args, kwargs)
        if foreign:  # SmartFutures of other executors: wait for their values first
            from .._submission import submit_call

            target: Any = self if options.is_default else _WithOptions(self, options)
            return submit_call(target, fn, args, kwargs).future
        future = self._start_call(fn, args, kwargs, options, chained)
        if options.timeout is not None:
            self._time(future, fn, options.timeout)
        return future

    def _start_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: CallOptions,
        chained: Chained | None,
    ) -> EngineFuture:
        """Hand one call to the engine. *chained*: which arguments are now engine futures
        of this executor's calls (see ``native_arguments``; the engine resolves them)."""
        raise NotImplementedError

    # -- timeouts (the deadline thread) ---------------------------------------------

    def _time(self, future: EngineFuture, fn: Callable[..., Any], timeout: float) -> None:
        timed = _Timed(future.call_id, future, callable_name(fn), timeout)
        started = self._started_at_submit()
        if started is not None:
            timed.started, timed.where = started
        with self._lock:
            self._timed[future.call_id] = timed
            if self._timer is None:
                self._timer = threading.Thread(
                    target=self._timer_loop, name=f"{self.name}-deadlines", daemon=True
                )
                self._timer.start()
        self._timer_wake.set()

    def _started_at_submit(self) -> tuple[float, str] | None:
        """For engines whose start is not observable: (now, where) to count from submit."""
        return None

    def _started(self, call_ids: list[int]) -> dict[int, tuple[float, str]]:
        """Of *call_ids* (not yet seen running), those now running: (monotonic start, where)."""
        return {}

    def _expire(self, call_id: int) -> bool:
        """Stop the timed-out call *call_id* on the engine; False if it had already finished
        (the subclass marks it finished under ``_lock`` so that only one outcome wins)."""
        raise NotImplementedError

    def _timer_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                timed = [t for t in self._timed.values() if not t.future.done()]
                self._timed = {t.call_id: t for t in timed}
            if not timed:
                self._timer_wake.wait()
                self._timer_wake.clear()
                continue
            waiting = [t for t in timed if t.started is None]
            if waiting:
                try:
                    seen = self._started([t.call_id for t in waiting])
                except Exception:  # the engine is closing or busy: look again later
                    seen = {}
                for t in waiting:
                    if t.call_id in seen:
                        t.started, t.where = seen[t.call_id]
            now = time.monotonic()
            wait = _POLL if waiting else 1.0
            for t in timed:
                if t.started is None:
                    continue
                left = t.started + t.timeout - now
                if left <= 0:
                    self._time_out(t)
                else:
                    wait = min(wait, left)
            self._timer_wake.wait(wait)
            self._timer_wake.clear()

    def _time_out(self, timed: _Timed) -> None:
        with self._lock:
            self._timed.pop(timed.call_id, None)
        if not self._expire(timed.call_id):
            return
        self._stats.task_finished(Outcome.FAILED)
        set_outcome(
            timed.future, None, TaskTimeoutError(timed.function, timed.timeout, timed.where)
        )

    # -- records ---------------------------------------------------------------------

    def _snapshot(self, attempts: list[AttemptRow], **extra: Any) -> ExecutorStats:
        """Stats whose durations and per-worker host rows come from the attempt rows."""
        import numpy as np

        per_worker: dict[str, list[float]] = {}
        failed: dict[str, int] = {}
        durations = []
        for row in attempts:
            if row.outcome == "won" and row.end is not None:
                durations.append(row.end - row.start)
                per_worker.setdefault(row.slot, []).append(row.end - row.start)
            elif row.outcome in ("failed", "lost", "timed out"):
                failed[row.slot] = failed.get(row.slot, 0) + 1
        hosts = [
            HostRow(
                name=w,
                done=len(d),
                failed=failed.get(w, 0),
                p50=percentile(d, 50),
                p95=percentile(d, 95),
            )
            for w, d in sorted(per_worker.items())
        ]
        hosts += [
            HostRow(name=w, done=0, failed=n)
            for w, n in sorted(failed.items())
            if w not in per_worker
        ]
        rows = tuple(sorted(attempts, key=lambda a: a.start))
        snapshot = self._stats.snapshot(
            self.name,
            attempt_rows=rows,
            host_rows=tuple(hosts),
            **extra,
            # the same rows as dicts, for code written against earlier versions
            attempts=[_attempt_dict(r) for r in rows],
            hosts=[_host_dict(h) for h in hosts],
        )
        return dataclasses.replace(snapshot, durations=np.asarray(durations, dtype=np.float64))

    # -- lifecycle --------------------------------------------------------------------

    def _live_futures(self) -> list[EngineFuture]:
        raise NotImplementedError

    def _stop_threads(self) -> None:
        self._stop.set()
        self._timer_wake.set()

    def _join(self) -> None:
        for future in self._live_futures():
            with contextlib.suppress(CancelledError):
                future.exception()  # waits; the outcome stays with the caller's future


def _attempt_dict(row: AttemptRow) -> dict[str, Any]:
    return {
        "slot": row.slot,
        "start": row.start,
        "end": row.end,
        "outcome": row.outcome,
        "bundle": row.bundle,
        "is_backup": row.is_backup,
    }


def _host_dict(row: HostRow) -> dict[str, Any]:
    return {
        "host": row.name,
        "done": row.done,
        "failed": row.failed,
        "p50": row.p50,
        "p95": row.p95,
    }
