"""The pool's shared state and the dispatch of tasks to workers.

Threads, lock and ownership
---------------------------
* **Caller threads** (``submit``, ``shutdown``, ``cancel_queued``, a future's
  ``stop``) pickle the call *outside* any lock, then take ``Pool.lock`` to queue
  the task or, when a worker is idle and nothing is queued, to send it directly.
* **The result thread** (``_results.ResultLoop``, one per pool) reads the result
  pipes, completes futures, enforces deadlines and reaps dead workers.

``Pool.lock`` guards everything here: ``pending``, ``workers``, ``leaving``,
each worker's state and in-flight queue, the function-id table, the duration
estimate, the deadlines and the closing flags. Nothing under it blocks: task
pipes are non-blocking (what does not fit waits in ``Worker.outq`` until the
result thread sees the pipe writable), a kill is one ``kill(2)``, and worker
processes are started *outside* it: ``_reserve`` counts a start in
``spawning`` under the lock, ``start_workers`` runs ``fork``/``exec`` unlocked
and adds the worker under the lock. Futures are completed and user callbacks
run outside the lock. Lock order: ``Pool.lock`` -> ``TaskStats`` lock -> a
Future's condition.

When a call starts
------------------
A worker runs its tasks one at a time in the order they were sent, so the
head of its ``in_flight`` is the one running: it starts when it is sent to an
idle READY worker, when the worker becomes READY, or when the previous task's
result arrives. That is when its future is marked running and its timeout
starts (no message per call is needed; the deadline is never early, at worst
late by one result's latency). Tasks behind the head are *prefetched*: not
running, cancellable by a plain ``cancel()``; a cancelled prefetched task still
runs in the worker but its result is dropped.

Worker lifecycle (``_handles.State``)
-------------------------------------
``workers`` holds the serving workers (STARTING, READY), which count against
``max_workers``. A worker leaves it (to ``leaving``) when it gets no new work:
RETIRING (sent its ``max_tasks_per_worker`` tasks: its task pipe is closed once
they are answered, so it exits), RETIRED (it said, with a result, that it is
over its memory limit and exits: nothing it holds has started), EXITING (pool
closing) or KILLED (timeout, stopped call, terminate). A worker leaving lets a
replacement start at once (at most ``2 * max_workers`` processes in all). The
result thread reaps a worker when its process sentinel (pidfd) fires, after
draining its last results: the running task, if its future is not finished
yet, fails with ``WorkerDiedError``; tasks behind it go back to the front of
``pending`` (they never started, so nothing runs twice).

Batching: each worker gets up to ``depth`` tasks in one message and is
refilled when at most ``depth // 2`` remain. ``depth`` adapts to an average of
the task durations measured in the workers, so that a worker holds about
``_PREFETCH_WINDOW`` seconds of work (1 while nothing has been measured, at
most ``_MAX_DEPTH``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from smart_future import StoppableFuture

from .._stats import Outcome, TaskStats
from . import _handles, _shm
from ._handles import State, Task, Worker
from ._lifecycle import Failed, WorkerLifecycle
from ._run_handle import TaskFuture

if TYPE_CHECKING:
    from ._results import ResultLoop

__all__ = ["Pool", "ProcessFuture", "Submission"]

T = TypeVar("T")

_PREFETCH_WINDOW = 0.002  # seconds of work a worker should hold
_PER_TASK_OVERHEAD = 15e-6  # unmeasured per-task cost in the worker (unpickle, pickle, write)
_MAX_DEPTH = 64
_FUNCTION_CACHE_SIZE = 1024  # functions a worker keeps unpickled (mirrored by the parent)
_FUNCTION_IDS_SIZE = 4096  # distinct function pickles the parent keeps ids for
_INF = float("inf")

# What submit_many takes per call: future, fn, fn_bytes, args_bytes, segment, timeout.
Submission = tuple[
    TaskFuture, Callable[..., Any], bytes, bytes, _shm.Segment | None, float | None
]


class ProcessFuture(StoppableFuture[T]):
    """A PROCESS future: ``stop()`` of a running call kills the worker running it."""

    _pool: Pool | None = None
    run_seconds = 0.0  # how long the call ran in its worker, set before it completes

    def stop(self) -> bool:
        if not super().stop():
            return False
        pool = self._pool
        if pool is not None:
            pool.stop_running(self)
        return True


class Pool(WorkerLifecycle):
    """The state shared by caller threads and the result thread (see the module docstring)."""

    def __init__(
        self,
        max_workers: int,
        name: str,
        stats: TaskStats,
        shm_threshold: int | None,
        max_tasks: int | None = None,
        max_memory: int | None = None,
        stdio: Callable[[], tuple[int, int]] | None = None,
        host: str | None = None,
    ) -> None:
        self.max_workers = max_workers
        self.stdio = stdio  # makes each worker's stdout and stderr pipes (None: ours)
        self.drain_stdio: Callable[[], None] | None = None  # before each batch of results
        self.host = host  # the REMOTE host it serves as (failures name it), or None
        self.shm_threshold = shm_threshold
        self.max_tasks = max_tasks
        self.max_memory = max_memory
        self.name = name
        self.stats = stats
        self.lock = threading.Lock()
        self.pending: deque[Task] = deque()
        self.workers: list[Worker] = []  # serving: STARTING or READY
        self.leaving: list[Worker] = []  # RETIRING, RETIRED, EXITING, KILLED: not yet reaped
        self.spawning = 0  # worker processes being started outside the lock
        self.timed: dict[Worker, float] = {}  # deadline of each worker's running task
        self.function_ids: dict[bytes, int] = {}
        self.next_fid = 0
        self.next_task_id = 0
        self.avg_duration: float | None = None
        self.closing = False
        self.terminating = False
        self.startup_failures = 0
        self.requeued = 0  # tasks sent to a worker that ended before starting them
        self.sent_path: list[str] = []
        self.path_version = 0
        self.results: ResultLoop | None = None
        self.env: dict[str, str] | None = None
        self.original_pythonpath: str | None = None

    # -- caller side --------------------------------------------------------

    def submit(
        self,
        future: TaskFuture,
        fn: Callable[..., Any],
        fn_bytes: bytes,
        args_bytes: bytes,
        segment: _shm.Segment | None,
        timeout: float | None = None,
    ) -> None:
        with self.lock:
            if self.closing:
                if segment is not None:
                    segment.close()
                raise RuntimeError(
                    f"cannot submit to ProcessExecutor {self.name!r}: it has been shut down"
                )
            if sys.path != self.sent_path:
                self.sent_path = list(sys.path)
                self.path_version += 1
            fid = self.function_ids.get(fn_bytes)
            if fid is None:
                fid = self._new_function_id(fn_bytes)
            task = Task(self.next_task_id, future, fn, fid, fn_bytes, args_bytes, segment, timeout)
            self.next_task_id += 1
            self.stats.task_submitted()
            pending = self.pending
            pending.append(task)
            if len(pending) == 1:
                for worker in self.workers:
                    if not worker.in_flight:
                        self._send_batch(worker, 1)
                        return
            spawn = self._reserve()
        if spawn:
            self.start_workers(spawn)

    def submit_many(
        self,
        calls: list[Submission],
    ) -> None:
        """``submit`` for a batch (future, fn, fn_bytes, args_bytes, segment, timeout) under
        one lock: the batch goes to the workers as few frames, not one write per call."""
        with self.lock:
            if self.closing:
                for call in calls:
                    if call[4] is not None:
                        call[4].close()
                raise RuntimeError(
                    f"cannot submit to ProcessExecutor {self.name!r}: it has been shut down"
                )
            if sys.path != self.sent_path:
                self.sent_path = list(sys.path)
                self.path_version += 1
            function_ids = self.function_ids
            pending = self.pending
            task_id = self.next_task_id
            for future, fn, fn_bytes, args_bytes, segment, timeout in calls:
                fid = function_ids.get(fn_bytes)
                if fid is None:
                    fid = self._new_function_id(fn_bytes)
                pending.append(
                    Task(task_id, future, fn, fid, fn_bytes, args_bytes, segment, timeout)
                )
                task_id += 1
            self.next_task_id = task_id
            self.stats.task_submitted(len(calls))
            # As in submit: idle workers take the oldest calls, one each, before anything
            # queues behind a busy worker (a call must not wait behind a long one while a
            # worker is idle, and the first calls submitted start first).
            for worker in self.workers:
                if not pending:
                    break
                if not worker.in_flight:
                    self._send_batch(worker, 1)
            spawn = self.fill()
        if spawn:
            self.start_workers(spawn)

    def cancel_queued(self) -> int:
        with self.lock:
            queued = list(self.pending)
            self.pending.clear()
        cancelled = 0
        for task in queued:  # outside the lock: cancel() runs the futures' callbacks
            task.release()
            self.stats.task_finished(Outcome.CANCELLED)
            future = task.future
            if not future.cancelled() and future.cancel():
                cancelled += 1
            future.set_running_or_notify_cancel()  # tells its waiters (wait, as_completed)
        return cancelled

    def close(self) -> None:
        """Stop accepting tasks; workers exit once the queued and running tasks are done."""
        with self.lock:
            if self.closing:
                return
            self.closing = True
            self.wake()

    def terminate(self) -> None:
        """Stop now: cancel queued tasks and kill the workers, even mid-task."""
        self.cancel_queued()
        with self.lock:
            self.closing = True
            self.terminating = True
            workers = [*self.workers, *self.leaving]
            self.wake()
        for worker in workers:
            worker.kill()

    def join(self) -> None:
        results = self.results
        if results is not None and results.thread is not threading.current_thread():
            results.thread.join()

    def after_fork_in_child(self) -> None:
        """Make this pool inert in a forked child without touching the parent's workers."""
        self.lock = threading.Lock()  # the parent's may have been held by another thread
        self.closing = True
        for worker in (*self.workers, *self.leaving):
            for fd in (worker.task_fd, worker.result_fd, worker.pidfd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if worker.channel is not None:
                with contextlib.suppress(OSError):
                    worker.channel.close()
            worker.state = State.DEAD
            worker.proc.returncode = 0  # not our child: never wait for it
        if self.results is not None:
            self.results.after_fork_in_child()
            self.results = None
        self.workers = []
        self.leaving = []
        self.pending = deque()
        self.timed = {}

    # -- helpers, called with the lock held ---------------------------------

    def wake(self) -> None:
        if self.results is not None:
            self.results.wake()

    def _new_function_id(self, fn_bytes: bytes) -> int:
        if len(self.function_ids) >= _FUNCTION_IDS_SIZE:
            # Forget the oldest; if it is used again it just gets a new id.
            del self.function_ids[next(iter(self.function_ids))]
        fid = self.next_fid
        self.next_fid += 1
        self.function_ids[fn_bytes] = fid
        return fid

    def _depth(self) -> int:
        avg = self.avg_duration
        if avg is None:
            return 1
        return max(1, min(_MAX_DEPTH, int(_PREFETCH_WINDOW / (avg + _PER_TASK_OVERHEAD))))

    def _reserve(self) -> int:
        """How many workers to start for the queue (counted in ``spawning``)."""
        uncovered = len(self.pending) - self.spawning
        if uncovered <= 0:
            return 0
        serving = len(self.workers) + self.spawning
        # Leaving workers do not count against max_workers (a replacement starts while
        # they finish), but the processes alive at once stay bounded.
        room = min(self.max_workers - serving, 2 * self.max_workers - serving - len(self.leaving))
        count = max(0, min(room, uncovered))
        self.spawning += count
        return count

    def _send_batch(self, worker: Worker, count: int) -> None:
        """Move up to *count* tasks from ``pending`` to *worker* in one message."""
        if self.max_tasks is not None:
            count = min(count, self.max_tasks - worker.sent)
        items: list[tuple[int, int, bytes | None, bytes, tuple[tuple[int, int], ...] | None]] = []
        segments: list[int] = []
        known = worker.known
        in_flight = worker.in_flight
        idle = not in_flight
        pending = self.pending
        while pending and len(items) < count:
            task = pending.popleft()
            if task.future.cancelled():
                task.future.set_running_or_notify_cancel()  # tells its waiters
                task.release()
                self.stats.task_finished(Outcome.CANCELLED)
                continue
            fid = task.fid
            fn_bytes: bytes | None = None
            if fid in known:
                known.move_to_end(fid)
            else:
                known[fid] = None
                fn_bytes = task.fn_bytes
            layout = None
            if task.segment is not None:
                layout = task.segment.layout
                segments.append(task.segment.fd)
            items.append((task.task_id, fid, fn_bytes, task.args_bytes, layout))
            task.worker = worker
            in_flight.append(task)
        if not items:
            return
        worker.sent += len(items)
        # Every task that waits behind another in the worker can still be cancelled: the
        # worker skips it then (numbered in the order the worker receives them).
        number = worker.sent - len(items)
        base = len(in_flight) - len(items)
        for offset in range(1 if idle else 0, len(items)):  # (idle: the first starts now)
            worker.skip_if_cancelled(in_flight[base + offset], number + offset)
        evict: list[int] = []
        while len(known) > _FUNCTION_CACHE_SIZE:  # never one of this batch: they are newest
            evict.append(known.popitem(last=False)[0])
        new_path = None
        if worker.path_version != self.path_version:
            worker.path_version = self.path_version
            new_path = self.sent_path
        if segments:
            self._send_segments(worker, segments)
        worker.write(pickle.dumps((evict, items, new_path), protocol=5))
        results = self.results
        if (
            not worker.flush()
            and results is not None
            and threading.current_thread() is not results.thread
        ):
            self.wake()  # the result thread will wait for the pipe to be writable
        if idle:
            self.start_head(worker)
        if self.max_tasks is not None and worker.sent >= self.max_tasks:
            self.retire(worker, State.RETIRING)

    def _send_segments(self, worker: Worker, fds: list[int]) -> None:
        """Send a batch's segment descriptors ahead of its frame (lock held; does not block)."""
        try:
            if worker.channel is None:  # pragma: no cover - segments are made only with a channel
                raise OSError("no descriptor socket")
            worker.channel.send(fds)
        except OSError:
            # The worker is gone (EPIPE), or the socket is full: the worker could not
            # find the descriptors of this frame, so stop it; when it is reaped its
            # running task fails and the others are re-queued.
            worker.kill()

    def fill(self) -> int:
        """Refill workers that are low on work; returns how many workers to start."""
        if not self.pending:
            return 0
        depth = self._depth()
        low = depth // 2
        for worker in list(self.workers):  # _send_batch may retire one
            if not self.pending:
                return 0
            have = len(worker.in_flight)
            if have <= low:
                self._send_batch(worker, min(depth - have, self._fair_share(worker)))
        return self._reserve()

    def _fair_share(self, worker: Worker) -> int:
        # The depth comes from the average duration of *all* tasks so far, which
        # a few tiny calls can make misleadingly small; never give a worker more
        # than its share of the outstanding work, so a burst of long tasks is
        # spread evenly over the pool.
        outstanding = len(self.pending) + sum(len(w.in_flight) for w in self.workers)
        share = -(-outstanding // self.max_workers)
        return max(1, share - len(worker.in_flight))

    def fail_pending(self, failed: Failed, error: BaseException) -> None:
        for task in self.pending:
            if task.future.set_running_or_notify_cancel():
                failed.append((task, error))
            else:
                task.release()
                self.stats.task_finished(Outcome.CANCELLED)
        self.pending.clear()

    # -- no lock ----------------------------------------------------------------

    def fail(self, failed: Failed) -> None:
        for task, error in failed:
            task.release()
            self.stats.task_finished(Outcome.FAILED)
            _handles.complete_future(task.future, None, error)
