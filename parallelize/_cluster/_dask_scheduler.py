"""What ``DaskExecutor`` learns from the Dask scheduler and workers: backups, records, starts.

The middle layer of :class:`~._dask.DaskExecutor` (which holds the state and
submits): the heartbeat thread that reads run times from the scheduler's task
stream and starts backup copies of stragglers (``_speculation``), ``stats()``
built from the task stream, and ``_started`` (which timed calls a worker is
running now) for the deadline thread of ``_engine_base``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._records import AttemptRow
from .._stats import ExecutorStats
from ._engine_base import EngineExecutor
from ._engine_future import EngineFuture
from ._remote_side import executing_keys
from ._speculation import Running, choose_backup

__all__ = ["Attempt", "Call", "DaskScheduler"]

logger = logging.getLogger("parallelize")


@dataclass(eq=False)
class Attempt:
    key: str
    engine: Any  # distributed.Future
    is_backup: bool
    done: bool = False


@dataclass(eq=False)
class Call:
    id: int
    future: EngineFuture
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    submitted: float
    attempts: list[Attempt] = field(default_factory=list)
    seen_running: float | None = None  # monotonic time the heartbeat first saw it processing
    workers: set[str] = field(default_factory=set)
    finished: bool = False
    backups: bool = True  # False: submitted with backups=False


class DaskScheduler(EngineExecutor):
    """Scheduler-reading half of the Dask executor; the state is set by ``DaskExecutor``."""

    client: Any
    backups: bool
    max_backups_per_call: int
    _prefix: str
    _calls: dict[int, Call]
    _durations: list[float]
    _durations_read: set[str]
    _stream_mark: float
    _lost: dict[int, list[tuple[str, float, float]]]
    _backups_started: int
    _backups_won: int
    _winners: set[str]
    _timed_out_keys: set[str]
    _started_wall: float
    _threads_total: int
    _threads_checked: float
    _wake: threading.Event

    def _start_attempt(self, call: Call, worker: str | None) -> None:
        raise NotImplementedError

    # -- backups (heartbeat thread) -----------------------------------------------

    def _may_need_backup(self) -> bool:
        return bool(self._calls)

    def _read_durations(self) -> None:
        """Add the run times of calls finished since the last look (scheduler records)."""
        records = self.client.get_task_stream(start=self._stream_mark - 1.0)
        prefix = self._prefix + "-"
        for rec in records:
            key = str(rec.get("key", ""))
            if (
                not key.startswith(prefix)
                or key in self._durations_read
                or rec.get("status") != "OK"
            ):
                continue
            compute = [s for s in rec.get("startstops", ()) if s.get("action") == "compute"]
            if compute:
                self._durations_read.add(key)
                self._durations.append(compute[-1]["stop"] - compute[0]["start"])
                self._stream_mark = max(self._stream_mark, compute[-1]["stop"])

    def _consider_backup(self) -> None:
        now = time.monotonic()
        if now - self._threads_checked > 5.0:
            self._threads_total = sum(self.client.nthreads().values())
            self._threads_checked = now
        with self._lock:
            live = len(self._calls)
        if live > self._threads_total:
            # More calls than worker threads: some are queued, so no backup is due, and
            # asking the scheduler what runs where would only load it.
            return
        self._read_durations()
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
                if not call.backups:
                    continue
                running.append(
                    Running(
                        call.id, now - call.seen_running, frozenset(workers), len(call.attempts) - 1
                    )
                )
        durations = self._durations
        if not self.backups:
            return
        choice = choose_backup(
            running,
            durations,
            idle_workers,
            pending=pending,
            max_backups=self.max_backups_per_call,
            started=self._backups_started,
            submitted=self._stats.submitted,
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
        records = self.client.get_task_stream(start=self._started_wall)
        with self._lock:
            winners, timed_out = set(self._winners), set(self._timed_out_keys)
            lost = {k: list(v) for k, v in self._lost.items()}
            started, won = self._backups_started, self._backups_won
        prefix = self._prefix + "-"
        attempts: list[AttemptRow] = []
        for rec in records:
            key = str(rec.get("key", ""))
            compute = [s for s in rec.get("startstops", ()) if s.get("action") == "compute"]
            if not key.startswith(prefix) or not compute:
                continue
            ok = rec.get("status") == "OK"
            outcome = "won" if key in winners else ("cancelled" if ok else "failed")
            worker = str(rec.get("worker", "?"))
            attempts.append(
                AttemptRow(
                    bundle=int(key[len(prefix) :].split("-")[0]),
                    attempt=0,
                    host=worker,
                    slot=worker,
                    start=compute[0]["start"] - self._started_wall,
                    end=compute[-1]["stop"] - self._started_wall,
                    outcome="timed out" if key in timed_out else outcome,
                    is_backup="-b" in key[len(prefix) :],
                )
            )
        for call_id, rows in lost.items():
            attempts.extend(
                AttemptRow(
                    bundle=call_id,
                    attempt=0,
                    host=worker,
                    slot=worker,
                    start=start - self._started_wall,
                    end=end - self._started_wall,
                    outcome="lost",
                )
                for worker, start, end in rows
            )
        return self._snapshot(attempts, backups_started=started, backups_won=won)

    # -- timeouts (the deadline thread, see _engine_base) ---------------------------

    def _started(self, call_ids: list[int]) -> dict[int, tuple[float, str]]:
        # The scheduler's "processing" includes tasks waiting on a worker for a thread:
        # ask the workers it names which of those they are running.
        with self._lock:
            keys = {
                a.key: call_id
                for call_id in call_ids
                if (call := self._calls.get(call_id)) is not None
                for a in call.attempts
            }
        workers = [
            w
            for w, queued in self.client.processing().items()
            if keys.keys() & set(map(str, queued))
        ]
        if not workers:
            return {}
        now = time.monotonic()
        seen = {}
        for worker, running in self.client.run(executing_keys, workers=workers).items():
            for key in running:
                if key in keys:
                    seen[keys[key]] = (
                        now,
                        f"Dask worker {worker} (Dask cannot stop a running task: it was "
                        "cancelled and the worker thread runs on)",
                    )
        return seen

    def _expire(self, call_id: int) -> bool:
        with self._lock:
            call = self._calls.pop(call_id, None)
            if call is None or call.finished:
                return False
            call.finished = True
            engines = [a.engine for a in call.attempts]
            self._timed_out_keys.update(a.key for a in call.attempts)
        self.client.cancel(engines, reason="the call ran past its timeout")
        return True
