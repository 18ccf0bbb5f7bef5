"""``Method.DASK``: calls run as tasks of a Dask cluster (``distributed``).

Each call is one Dask task with a unique key (calls are never deduplicated),
submitted as ``run_call(fn, args, kwargs)`` so every user keyword reaches the
function. The SmartFuture's inner future is completed by the Dask future's
callback; its value stays on the worker until asked for, then every finished
value this executor holds is gathered in one round trip. A SmartFuture of this
executor passed to another call is handed to Dask as its Dask future, so the
value moves between workers only.

Failures: a worker dying under a call is retried by the scheduler itself (its
``allowed-failures`` setting); when Dask gives up (``KilledWorker``) the call
fails with :class:`PoisonedCallError` listing each lost attempt. An exception
raised by the function arrives with its type and the worker's traceback, and
is not retried.

Backups: a heartbeat thread (only while calls are live, and only with
*backups*) asks the scheduler which calls are processing where, and starts at
most one copy per heartbeat of a straggler on an idle worker (see
``_speculation``); the first copy to finish wins and the other is cancelled.

Threads and locks: user threads submit; Dask's callback thread finishes
attempts; the heartbeat thread looks for stragglers. ``_lock`` guards
``_calls`` and every call's attempt list and is never held across a call into
Dask. ``_fetch_lock`` only serialises batched gathers (it guards no state).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from .._errors import AttemptRecord, PoisonedCallError, TaskLostError, attach_remote_traceback
from .._executor_base import BaseExecutor
from .._stats import ExecutorStats, Outcome
from ._engine_future import UNFETCHED, EngineFuture, native_arguments
from ._remote_side import lost_attempts, run_call
from ._speculation import Running, choose_backup

__all__ = ["DaskExecutor"]

logger = logging.getLogger("parallelize")
_executor_ids = itertools.count()
_FETCH_BATCH = 1024  # values gathered at most per round trip


@dataclass(eq=False)
class _Attempt:
    key: str
    engine: Any  # distributed.Future
    is_backup: bool
    done: bool = False


@dataclass(eq=False)
class _Call:
    id: int
    future: EngineFuture
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    submitted: float
    attempts: list[_Attempt] = field(default_factory=list)
    seen_running: float | None = None  # monotonic time the heartbeat first saw it processing
    workers: set[str] = field(default_factory=set)
    finished: bool = False


class DaskExecutor(BaseExecutor):
    """Runs calls on a Dask cluster; a :class:`concurrent.futures.Executor`.

    *client*: a ``distributed.Client`` to use (not closed by this executor); else
    *address* (``tcp://scheduler:8786``) to connect to; else a local cluster of
    worker processes is started (and closed on shutdown). *backups*: start
    speculative copies of straggling calls (at most *max_backups_per_call* each).
    """

    passes_smart_futures = True  # the decorator hands SmartFuture arguments to submit()

    def __init__(
        self,
        client: Any = None,
        *,
        address: str | None = None,
        backups: bool = True,
        max_backups_per_call: int = 2,
        heartbeat_interval: float = 0.25,
        name: str | None = None,
    ) -> None:
        from distributed import Client

        super().__init__(name=name or f"dask-{next(_executor_ids)}")
        self._cluster: Any = None
        self._owns_client = client is None
        if client is None:
            if address:
                client = Client(address, set_as_default=False)  # type: ignore[no-untyped-call]
            else:
                from distributed import LocalCluster

                self._cluster = LocalCluster(  # type: ignore[no-untyped-call]
                    processes=True,
                    threads_per_worker=1,
                    dashboard_address="127.0.0.1:0",  # its HTTP server on loopback, any port
                    host="127.0.0.1",
                )
                client = Client(self._cluster, set_as_default=False)  # type: ignore[no-untyped-call]
        self.client = client
        self.backups = backups
        self.max_backups_per_call = max_backups_per_call
        self._heartbeat_interval = heartbeat_interval
        self._prefix = f"parallelize-{self.name}-{uuid.uuid4().hex[:8]}"
        self._ids = itertools.count()
        self._calls: dict[int, _Call] = {}
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        # Finished calls whose value is still on a worker (weak: a dropped future is skipped).
        self._unfetched: weakref.WeakSet[EngineFuture] = weakref.WeakSet()
        self._durations: list[float] = []  # client-side run-time estimates, for backups
        self._lost: dict[int, list[tuple[str, float, float]]] = {}
        self._backups_started = 0
        self._backups_won = 0
        self._winners: set[str] = set()
        self._started_wall = time.time()
        # The scheduler records task start/stop per worker once its task stream is on.
        self.client.get_task_stream(start=self._started_wall)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if backups:
            self._heartbeat = threading.Thread(
                target=self._heartbeat_loop, name=f"{self.name}-heartbeat", daemon=True
            )
            self._heartbeat.start()

    # -- submitting ------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self._check_open()
        args, kwargs, foreign = native_arguments(self, args, kwargs)
        if foreign:  # SmartFutures of other executors: wait for their values first
            from .._submission import submit_call

            return submit_call(self, fn, args, kwargs).future
        call_id = next(self._ids)
        future = EngineFuture(self, call_id, None)
        call = _Call(call_id, future, fn, args, kwargs, time.monotonic())
        with self._lock:
            self._calls[call_id] = call
        self._stats.task_submitted()
        self._start_attempt(call, None)
        self._wake.set()
        return future

    def _start_attempt(self, call: _Call, worker: str | None) -> None:
        backup = worker is not None
        key = f"{self._prefix}-{call.id}"
        pin: dict[str, Any] = {}
        if backup:
            key += f"-b{len(call.attempts)}"
            # Loose: if that worker is gone by then, any other may run the copy.
            pin = {"workers": [worker], "allow_other_workers": True}
        engine = self.client.submit(
            run_call, call.fn, call.args, call.kwargs, key=key, pure=False, **pin
        )
        attempt = _Attempt(key, engine, backup)
        with self._lock:
            call.attempts.append(attempt)
            if call.future.engine_future is None:
                call.future.engine_future = engine
            if backup:
                self._backups_started += 1
        if backup:
            logger.info("%s: backup of call %d on %s", self.name, call.id, worker)
        engine.add_done_callback(lambda done: self._attempt_done(call, attempt, done))

    # -- completion (Dask's callback thread) -------------------------------------

    def _attempt_done(self, call: _Call, attempt: _Attempt, engine: Any) -> None:
        status = engine.status
        exc: BaseException | None = None
        if status == "error":
            exc = engine.exception()
            if not _is_killed_worker(exc):
                tb = engine.traceback()
                if tb is not None:
                    attach_remote_traceback(exc, "".join(traceback.format_tb(tb)))
        lost = status != "finished" and (exc is None or _is_killed_worker(exc))
        with self._lock:
            attempt.done = True
            if call.finished:
                return
            if lost and any(not a.done for a in call.attempts):
                return  # another copy carries on
            call.finished = True
            del self._calls[call.id]
            losers = [a for a in call.attempts if not a.done]
            if status == "finished":
                call.future.engine_future = engine
                self._unfetched.add(call.future)
                self._winners.add(attempt.key)
                if attempt.is_backup:
                    self._backups_won += 1
                if call.seen_running is not None:
                    self._durations.append(time.monotonic() - call.seen_running)
            chained = call.future.used_as_argument
        call.fn, call.args, call.kwargs = _dropped, (), {}
        if losers and not chained:
            self.client.cancel([a.engine for a in losers], reason="another copy finished first")
        if status == "finished":
            self._stats.task_finished(Outcome.SUCCEEDED)
            _set(call.future, UNFETCHED)
        elif exc is not None and not lost:
            self._stats.task_finished(Outcome.FAILED)
            _set(call.future, None, exc)
        elif exc is not None:
            self._stats.task_finished(Outcome.FAILED)
            _set(call.future, None, self._poisoned(call, exc))
        else:
            self._stats.task_finished(Outcome.CANCELLED)
            _set(
                call.future,
                None,
                TaskLostError(
                    f"call {call.id} of {self.name!r} was cancelled on the Dask cluster "
                    "(by another client, or the scheduler lost it)"
                ),
            )

    def _poisoned(self, call: _Call, exc: BaseException) -> PoisonedCallError:
        keys = [a.key for a in call.attempts]
        records: list[tuple[str, float, float]] = []
        try:
            for key in keys:
                records.extend(self.client.run_on_scheduler(lost_attempts, key=key))
        except Exception:  # an old or unusual scheduler: fall back to what the error says
            records = []
        if not records:
            last = getattr(getattr(exc, "last_worker", None), "address", "?")
            records = [(str(last), 0.0, 0.0)]
        self._lost[call.id] = records
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
            f"call {call.id} of {self.name!r} was given up by Dask after its worker died "
            f"{len(attempts)} time(s) (the scheduler's allowed-failures; the call probably "
            f"kills its worker process): {where}",
            attempts,
        )

    # -- values ---------------------------------------------------------------------

    def _fetch(self, future: EngineFuture) -> Any:
        # One gather for this value and every other finished, unfetched one of ours
        # that is still referenced and was not passed to another call: a loop over
        # results costs one round trip per batch, not per value.
        with self._fetch_lock:
            if future.fetched is not UNFETCHED:
                return future.fetched
            with self._lock:
                self._unfetched.discard(future)
                batch = [future]
                while self._unfetched and len(batch) < _FETCH_BATCH:
                    other = self._unfetched.pop()
                    if not other.used_as_argument:  # its value is wanted on workers only
                        batch.append(other)
            try:
                values = self.client.gather([f.engine_future for f in batch])
            except BaseException:
                with self._lock:
                    self._unfetched.update(f for f in batch if f is not future)
                raise
            for other, value in zip(batch, values, strict=True):
                other.fetched = value
            return future.fetched

    def _cancel_call(self, future: EngineFuture) -> None:
        with self._lock:
            call = self._calls.pop(future.call_id, None)
            if call is None or call.finished:
                return
            call.finished = True
            engines = [a.engine for a in call.attempts]
        self._stats.task_finished(Outcome.CANCELLED)
        self.client.cancel(engines, reason="cancelled by the caller")

    # -- backups (heartbeat thread) -----------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                idle = not self._calls
            if idle:
                self._wake.wait()
                self._wake.clear()
                continue
            if self._stop.wait(self._heartbeat_interval):
                return
            try:
                self._consider_backup()
            except Exception:  # the client is closing or the scheduler is away: try later
                logger.debug("%s: heartbeat failed", self.name, exc_info=True)

    def _consider_backup(self) -> None:
        processing: dict[str, Any] = self.client.processing()
        now = time.monotonic()
        where: dict[str, str] = {}
        for worker, keys in processing.items():
            for key in keys:
                where[str(key)] = worker
        idle_workers = [w for w, keys in processing.items() if not keys]
        running = []
        pending = 0
        with self._lock:
            for call in self._calls.values():
                workers = {where[a.key] for a in call.attempts if not a.done and a.key in where}
                if not workers:
                    pending += 1
                    continue
                if call.seen_running is None:
                    call.seen_running = now
                call.workers |= workers
                running.append(
                    Running(
                        call.id, now - call.seen_running, frozenset(workers), len(call.attempts) - 1
                    )
                )
            durations = list(self._durations)
        if not self.backups:
            return
        choice = choose_backup(
            running,
            durations,
            idle_workers,
            pending=pending,
            max_backups=self.max_backups_per_call,
        )
        if choice is None:
            return
        call_id, worker = choice
        with self._lock:
            chosen = self._calls.get(call_id)
        if chosen is not None and not chosen.finished:
            self._start_attempt(chosen, worker)

    # -- introspection ----------------------------------------------------------

    def stats(self) -> ExecutorStats:
        """Counters, with durations and per-worker rows from the scheduler's task stream.

        ``extra``: ``hosts`` (one row per worker: done, failed, p50, p95 in seconds),
        ``attempts`` (one record per attempt for :meth:`ExecutorStats.plot_timeline`,
        seconds since this executor started; lost attempts included),
        ``backups_started``, ``backups_won``.
        """
        import dataclasses

        import numpy as np

        from ._speculation import percentile

        records = self.client.get_task_stream(start=self._started_wall)
        with self._lock:
            winners = set(self._winners)
            lost = {k: list(v) for k, v in self._lost.items()}
            started, won = self._backups_started, self._backups_won
        prefix = self._prefix + "-"
        attempts: list[dict[str, Any]] = []
        per_worker: dict[str, list[float]] = {}
        failed: dict[str, int] = {}
        durations = []
        for rec in records:
            key = str(rec.get("key", ""))
            if not key.startswith(prefix):
                continue
            compute = [s for s in rec.get("startstops", ()) if s.get("action") == "compute"]
            if not compute:
                continue
            start, stop = compute[0]["start"], compute[-1]["stop"]
            worker = str(rec.get("worker", "?"))
            call = key[len(prefix) :].split("-")[0]
            ok = rec.get("status") == "OK"
            outcome = "won" if key in winners else ("cancelled" if ok else "failed")
            attempts.append(
                {
                    "slot": worker,
                    "start": start - self._started_wall,
                    "end": stop - self._started_wall,
                    "outcome": outcome,
                    "bundle": int(call),
                    "is_backup": "-b" in key[len(prefix) :],
                }
            )
            if outcome == "won":
                durations.append(stop - start)
                per_worker.setdefault(worker, []).append(stop - start)
            elif outcome == "failed":
                failed[worker] = failed.get(worker, 0) + 1
        for call_id, rows in lost.items():
            for worker, start, end in rows:
                attempts.append(
                    {
                        "slot": worker,
                        "start": start - self._started_wall,
                        "end": end - self._started_wall,
                        "outcome": "lost",
                        "bundle": call_id,
                        "is_backup": False,
                    }
                )
        hosts = [
            {
                "host": w,
                "done": len(d),
                "failed": failed.get(w, 0),
                "p50": percentile(d, 50),
                "p95": percentile(d, 95),
            }
            for w, d in sorted(per_worker.items())
        ]
        hosts += [
            {"host": w, "done": 0, "failed": n, "p50": None, "p95": None}
            for w, n in sorted(failed.items())
            if w not in per_worker
        ]
        snapshot = self._stats.snapshot(
            self.name,
            hosts=hosts,
            attempts=sorted(attempts, key=lambda a: a["start"]),
            backups_started=started,
            backups_won=won,
        )
        return dataclasses.replace(snapshot, durations=np.asarray(durations, dtype=np.float64))

    # -- BaseExecutor hooks ---------------------------------------------------------

    def _cancel_queued(self) -> int:
        try:
            processing = {str(k) for keys in self.client.processing().values() for k in keys}
        except Exception:
            processing = set()
        with self._lock:
            queued = [
                c.future
                for c in self._calls.values()
                if not any(a.key in processing for a in c.attempts)
            ]
        return sum(1 for f in queued if f.cancel())

    def _shutdown_impl(self, *, wait: bool, cancel_futures: bool) -> None:
        if cancel_futures:
            self._cancel_queued()
        if wait:
            self._join()
        self._stop.set()
        self._wake.set()
        if wait and self._heartbeat is not None:
            self._heartbeat.join()
        if self._owns_client:
            if not wait:
                with self._lock:
                    live = [c.future for c in self._calls.values()]
                for future in live:
                    future.cancel()
            self.client.close()
            if self._cluster is not None:
                self._cluster.close()

    def _join(self) -> None:
        with self._lock:
            live = [c.future for c in self._calls.values()]
        for future in live:
            with contextlib.suppress(CancelledError):
                future.exception()  # waits; the outcome stays with the caller's future


def _dropped(*_: Any, **__: Any) -> None:  # what a finished call keeps instead of its function
    return None


def _is_killed_worker(exc: BaseException | None) -> bool:
    return type(exc).__name__ == "KilledWorker"


def _set(future: Future[Any], value: Any, exc: BaseException | None = None) -> None:
    if future.done():
        return
    try:
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)
    except InvalidStateError:  # cancelled by the caller meanwhile
        pass
