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
``_sending._PREFETCH_WINDOW`` seconds of work (1 while nothing has been measured, at
most ``_sending._MAX_DEPTH``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .._stats import Outcome, TaskStats
from . import _handles, _shm
from ._future import ProcessFuture
from ._handles import State, Task, Worker
from ._lifecycle import Failed, WorkerLifecycle
from ._run_handle import TaskFuture
from ._sending import BatchSender

if TYPE_CHECKING:
    from ._results import ResultLoop

__all__ = ["Pool", "ProcessFuture", "Submission"]

T = TypeVar("T")

_FUNCTION_IDS_SIZE = 4096  # distinct function pickles the parent keeps ids for
_INF = float("inf")

# What submit_many takes per call: future, fn, fn_bytes, args_bytes, segment, timeout.
Submission = tuple[TaskFuture, Callable[..., Any], bytes, bytes, _shm.Segment | None, float | None]


class Pool(BatchSender, WorkerLifecycle):
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
