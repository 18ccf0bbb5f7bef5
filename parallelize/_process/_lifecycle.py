"""Worker lifecycle of the process pool: starting workers, when a call starts, killing, retiring.

A mixin of ``_dispatch.Pool`` (split out to keep each module to one job); the
state it touches and the rules (lock, "When a call starts", the worker states)
are described in ``_dispatch``. Methods called "lock held" take no lock;
``start_workers`` and ``stop_running`` are called without it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from .._errors import TaskTimeoutError, WorkerDiedError
from .._pickling import callable_name
from .._stats import Outcome, TaskStats
from . import _handles
from ._handles import SERVING, State, Task, Worker
from ._run_handle import TaskFuture

if TYPE_CHECKING:
    from ._dispatch import Pool
    from ._results import ResultLoop

__all__ = ["WorkerLifecycle"]

_INF = float("inf")
Failed = list[tuple[Task, BaseException]]


class WorkerLifecycle:
    """The worker-lifecycle half of ``Pool`` (see the module docstring)."""

    if TYPE_CHECKING:  # state and methods of Pool that these methods use
        lock: threading.Lock
        name: str
        stats: TaskStats
        max_workers: int
        max_memory: int | None
        shm_threshold: int | None
        pending: deque[Task]
        workers: list[Worker]
        leaving: list[Worker]
        spawning: int
        timed: dict[Worker, float]
        closing: bool
        sent_path: list[str]
        path_version: int
        results: ResultLoop | None
        env: dict[str, str] | None
        stdio: Callable[[], tuple[int, int]] | None
        original_pythonpath: str | None

        def wake(self) -> None: ...
        def _depth(self) -> int: ...
        def _fair_share(self, worker: Worker) -> int: ...
        def _send_batch(self, worker: Worker, count: int) -> None: ...
        def fail_pending(self, failed: Failed, error: BaseException) -> None: ...
        def fail(self, failed: Failed) -> None: ...

    def stop_running(self, future: TaskFuture) -> None:
        """*future* was stopped (``stop()``): kill the worker if it is running it."""
        failed: Failed = []
        with self.lock:
            for worker in (*self.workers, *self.leaving):
                if worker.in_flight and worker.in_flight[0].future is future:
                    task = worker.in_flight[0]
                    killed = worker.state is State.KILLED
                    if worker.head_started and not task.discard and not killed:
                        self.stats.task_finished(Outcome.CANCELLED)
                        self.kill(worker, failed, None)
                    break
            spawn = self._reserve_replacement()
        if spawn:
            self.start_workers(spawn)

    def start_workers(self, count: int) -> None:
        """Start *count* workers reserved by ``_reserve`` (called without the lock)."""
        for _ in range(count):
            with self.lock:
                if self.env is None:
                    env = dict(os.environ)
                    old = env.get("PYTHONPATH")
                    root = _handles.PACKAGE_ROOT
                    env["PYTHONPATH"] = root + (os.pathsep + old if old else "")
                    self.env = env
                    self.original_pythonpath = old
                env = self.env
                version = self.path_version
                startup = _handles.startup_message(
                    self.sent_path,
                    self.original_pythonpath,
                    self.shm_threshold,
                    f"parallelize worker pool={self.name} parent={os.getpid()}",
                    self.max_memory,
                )
            try:
                worker = _handles.start_worker(
                    env, startup, self.shm_threshold is not None, _handles.BOOTSTRAP, self.stdio
                )
            except OSError as exc:  # out of fds, memory, processes...
                self._start_failed(exc)
                continue
            worker.path_version = version
            with self.lock:
                self.spawning -= 1
                self.workers.append(worker)
                self._ensure_results_thread()
                if self.pending:
                    self._send_batch(worker, min(self._depth(), self._fair_share(worker)))
                self.wake()  # the result thread registers its pipes and flushes its startup

    def _start_failed(self, exc: OSError) -> None:
        failed: Failed = []
        with self.lock:
            self.spawning -= 1
            if not self.workers and not self.spawning:  # nobody else will take the queue
                error = WorkerDiedError(f"cannot start a worker process: {exc}")
                error.__cause__ = exc
                self.fail_pending(failed, error)
        self.fail(failed)

    def _ensure_results_thread(self) -> None:
        if self.results is None:
            from ._results import ResultLoop

            self.results = ResultLoop(cast("Pool", self))
            self.results.thread.start()

    def _reserve_replacement(self) -> int:
        """Replace a killed worker right away, so that the pool keeps its size."""
        if self.closing or len(self.workers) + self.spawning >= self.max_workers:
            return 0
        if len(self.workers) + self.spawning + len(self.leaving) >= 2 * self.max_workers:
            return 0
        self.spawning += 1
        return 1

    def start_head(self, worker: Worker) -> None:
        """Mark the head of *worker*'s queue as running (see "When a call starts")."""
        in_flight = worker.in_flight
        if worker.head_started or not in_flight:
            return
        state = worker.state
        if state is not State.READY and state is not State.RETIRING:
            return
        worker.head_started = True
        task = in_flight[0]
        if not task.future.set_running_or_notify_cancel():
            task.discard = True  # cancelled while prefetched: it runs, its result is dropped
            self.stats.task_finished(Outcome.CANCELLED)
        elif task.timeout is not None:
            worker.deadline = time.monotonic() + task.timeout
            self.timed[worker] = worker.deadline
            self.wake()  # the result thread's select timeout must cover it

    def head_done(self, worker: Worker) -> Task:
        """Pop the head of *worker*'s queue: its result arrived (result thread)."""
        task = worker.in_flight.popleft()
        # Answered before we saw it start (a killed worker's last results): make sure
        # its waiters are told if it was cancelled.
        if (
            not worker.head_started
            and not task.discard
            and not task.future.set_running_or_notify_cancel()
        ):
            task.discard = True
            self.stats.task_finished(Outcome.CANCELLED)
        worker.head_started = False
        if worker.deadline != _INF:
            worker.deadline = _INF
            self.timed.pop(worker, None)
        return task

    def kill(self, worker: Worker, failed: Failed, error: BaseException | None) -> None:
        """SIGKILL *worker* now; its running task fails with *error* (None: it was stopped).

        The tasks behind it are re-queued when it is reaped, after its last results
        have been read, so that none runs twice."""
        worker.kill()
        if worker.in_flight and worker.head_started:
            head = worker.in_flight[0]
            if not head.discard:
                head.discard = True
                if error is not None:
                    failed.append((head, error))
        if worker.deadline != _INF:
            worker.deadline = _INF
            self.timed.pop(worker, None)
        self._leave(worker, State.KILLED)

    def timeout_error(self, worker: Worker) -> TaskTimeoutError:
        task = worker.in_flight[0]
        return TaskTimeoutError(
            callable_name(task.fn), task.timeout or 0.0, where=f"process worker {worker.pid}"
        )

    def _leave(self, worker: Worker, state: State) -> None:
        if worker.state in SERVING:
            self.workers.remove(worker)
            self.leaving.append(worker)
        worker.state = state
        if state is not State.RETIRING:  # it gets nothing more, not even unsent bytes
            worker.outq.clear()
        self.wake()

    def retire(self, worker: Worker, state: State) -> None:
        if worker.state in SERVING:
            self._leave(worker, state)
