"""The result thread of a process pool: results, deadlines and reaping.

One thread per pool owns the selector, every worker's ``rbuf`` and its
registrations. It watches, for each worker: the result pipe (results), the
task pipe when its ``outq`` has bytes left (writability), and the process
sentinel (a pidfd: readable once the process has exited). It never blocks on
anything but the selector, whose timeout is the earliest deadline of a running
task with ``timeout=`` (one timer for the whole pool, no thread per call).

A worker is reaped when its sentinel fires: its last results are drained from
the pipe first (they ran, so they are delivered, not re-run), then its running
task, if its future is not finished yet, fails with ``WorkerDiedError`` and the
tasks behind it go back to the queue. A worker whose result pipe reached EOF
but that is still alive after ``_REAP_TIMEOUT`` is killed. Where there is no
pidfd (not Linux), exited workers are polled every ``_POLL_INTERVAL``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
import time
from typing import Any

from .._errors import WorkerDiedError
from .._pickling import callable_name
from .._stats import Outcome
from ._dispatch import Pool, ProcessFuture
from ._handles import SERVING, State, Task, Worker, complete_future, death_message
from ._lifecycle import Failed
from ._outcomes import Completion, complete
from ._protocol import (
    FLAG_RETIRING,
    FRAME_HEAD,
    KIND_OK_SHM,
    KIND_READY,
    KIND_SKIPPED,
    RESULT_HEAD,
)

__all__ = ["ResultLoop"]

_READ_SIZE = 1 << 18
_EWMA_WEIGHT = 0.2
_STARTUP_FAILURE_LIMIT = 3
_REAP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.05
_FRAME_HEAD_SIZE = FRAME_HEAD.size
_RESULT_HEAD_SIZE = RESULT_HEAD.size

# Selector data: what a ready fd is.
_WAKE, _RESULTS, _TASKS, _SENTINEL = range(4)


class ResultLoop:
    """The result thread of one ``Pool``; see the module docstring."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.wake_pending = False  # under the pool lock
        # Result thread only: the selector and, per worker, whether its task pipe is
        # registered for writability (its result pipe and sentinel always are).
        self.selector = selectors.DefaultSelector()
        self.watching: dict[Worker, bool] = {}
        self.eof_at: dict[Worker, float] = {}  # EOF seen, process not yet reaped
        self.thread = threading.Thread(
            target=self._run, name=f"parallelize-{pool.name}-results", daemon=True
        )

    def wake(self) -> None:
        """Make the loop re-read the pool's state (pool lock held)."""
        if self.wake_w >= 0 and not self.wake_pending:
            self.wake_pending = True
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"x")

    def after_fork_in_child(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.wake_r = self.wake_w = -1

    # -- the loop -----------------------------------------------------------------

    def _run(self) -> None:
        selector = self.selector
        selector.register(self.wake_r, selectors.EVENT_READ, (_WAKE, None))
        try:
            while True:
                timeout = self._sync()
                if timeout is False:
                    return
                for key, _ in selector.select(timeout):
                    what, worker = key.data
                    if what == _RESULTS:
                        if self._read(worker) < 0:
                            self._on_eof(worker)
                    elif what == _TASKS:
                        with self.pool.lock:
                            if worker.state in SERVING or worker.state is State.RETIRING:
                                worker.flush()
                    elif what == _SENTINEL:
                        self._reap(worker)
                    else:
                        self._drain_wake()
                self._expire()
        except BaseException as exc:  # pragma: no cover - a bug: do not leave callers hanging
            self._abort(exc)
            raise
        finally:
            selector.close()

    def _sync(self) -> float | bool | None:
        """Update the selector; start exits when closing and idle.

        Returns the select timeout (None: no deadline), or False when all is done."""
        pool = self.pool
        selector = self.selector
        watching = self.watching
        with pool.lock:
            if (
                pool.closing
                and not pool.pending
                and not pool.spawning
                and not any(worker.in_flight for worker in pool.workers)
            ):
                for worker in list(pool.workers):
                    pool.retire(worker, State.EXITING)
                    self._close_task_fd(worker)  # EOF: the worker exits at once
            if pool.closing and not pool.workers and not pool.leaving and not pool.spawning:
                os.close(self.wake_r)
                os.close(self.wake_w)
                self.wake_r = self.wake_w = -1
                return False
            for worker in (*pool.workers, *pool.leaving):
                writing = watching.get(worker)
                if writing is None:
                    if worker.state is State.DEAD:
                        continue
                    selector.register(worker.result_fd, selectors.EVENT_READ, (_RESULTS, worker))
                    if worker.pidfd >= 0:
                        selector.register(worker.pidfd, selectors.EVENT_READ, (_SENTINEL, worker))
                    writing = watching[worker] = False
                state = worker.state
                want = bool(worker.outq) and (state in SERVING or state is State.RETIRING)
                if want and not writing:
                    selector.register(worker.task_fd, selectors.EVENT_WRITE, (_TASKS, worker))
                    watching[worker] = True
                elif writing and not want:
                    selector.unregister(worker.task_fd)
                    watching[worker] = False
                if state is not State.RETIRING and state not in SERVING and worker.task_fd >= 0:
                    self._close_task_fd(worker)  # killed, retired: nothing more to send
                elif state is State.RETIRING and not worker.in_flight and worker.task_fd >= 0:
                    self._close_task_fd(worker)  # its last task is answered: it exits
            deadlines = list(pool.timed.values())
        if self.eof_at:
            deadlines.append(time.monotonic() + _POLL_INTERVAL)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _drain_wake(self) -> None:
        with self.pool.lock:
            self.wake_pending = False
            try:
                while os.read(self.wake_r, 4096):
                    pass
            except OSError:
                pass

    def _close_task_fd(self, worker: Worker) -> None:
        """Close the parent's end of the task pipe, once (lock held)."""
        if self.watching.get(worker):
            self.selector.unregister(worker.task_fd)
            self.watching[worker] = False
        if worker.task_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(worker.task_fd)
            worker.task_fd = -1

    def _expire(self) -> None:
        """Kill the workers whose running task is past its deadline."""
        pool = self.pool
        if not pool.timed and not self.eof_at:
            return
        now = time.monotonic()
        with pool.lock:
            expired = [worker for worker, deadline in pool.timed.items() if deadline <= now]
        for worker in expired:
            if self._read(worker) < 0:  # a result already in the pipe wins over the deadline
                self._on_eof(worker)
        for worker, since in list(self.eof_at.items()):
            if worker.proc.poll() is not None:
                self._reap(worker)
            elif now - since > _REAP_TIMEOUT:  # closed its pipe but lives on
                worker.kill()
        if not expired:
            return
        failed: Failed = []
        spawn = 0
        with pool.lock:
            for worker in expired:
                if pool.timed.get(worker, now + 1) <= now:
                    pool.stats.task_finished(Outcome.FAILED)
                    pool.kill(worker, failed, pool.timeout_error(worker))
            spawn = pool._reserve_replacement()
        for task, error in failed:  # stats were recorded above
            task.release()
            complete_future(task.future, None, error)
        if spawn:
            pool.start_workers(spawn)

    # -- reading results ----------------------------------------------------------

    def _read(self, worker: Worker) -> int:
        """Read and settle what *worker* sent: 1 if it sent something, 0 if nothing was
        there, -1 at EOF (its process is exiting: the caller reaps it)."""
        if worker.eof:
            return -1
        try:
            chunk = os.read(worker.result_fd, _READ_SIZE)
        except BlockingIOError:
            return 0
        except OSError:
            chunk = b""
        frames: list[tuple[int, int, float, bytes, Any]] = []
        if chunk:
            buf = worker.rbuf
            buf += chunk
            size = len(buf)
            pos = 0
            while size - pos >= _FRAME_HEAD_SIZE:
                (length,) = FRAME_HEAD.unpack_from(buf, pos)
                end = pos + _FRAME_HEAD_SIZE + length
                if end > size:
                    break
                kind, task_id, duration = RESULT_HEAD.unpack_from(buf, pos + _FRAME_HEAD_SIZE)
                payload = bytes(buf[pos + _FRAME_HEAD_SIZE + _RESULT_HEAD_SIZE : end])
                segment: Any = None
                if kind & ~FLAG_RETIRING == KIND_OK_SHM:
                    segment = self._receive_segment(worker)
                frames.append((kind, task_id, duration, payload, segment))
                pos = end
            if pos:
                del buf[:pos]
        completions: list[Completion] = []
        spawn = 0
        pool = self.pool
        with pool.lock:
            for kind, task_id, duration, payload, segment in frames:
                if kind == KIND_READY:
                    if worker.state is State.STARTING:
                        worker.state = State.READY
                        pool.start_head(worker)
                    pool.startup_failures = 0
                    continue
                task = pool.head_done(worker)
                if task.task_id != task_id:  # pragma: no cover - protocol bug
                    raise RuntimeError(f"result for task {task_id}, expected {task.task_id}")
                if kind & FLAG_RETIRING:  # over its memory limit: it exits now
                    kind &= ~FLAG_RETIRING
                    pool.retire(worker, State.RETIRED)
                else:
                    pool.start_head(worker)
                completions.append((task, kind, duration, payload, segment))
                future = task.future
                if type(future) is not ProcessFuture and isinstance(future, ProcessFuture):
                    future.worker_pid = worker.pid  # (REMOTE's timeline rows)
                if kind == KIND_SKIPPED:  # cancelled before it ran: says nothing of durations
                    continue
                avg = pool.avg_duration
                pool.avg_duration = (
                    duration if avg is None else avg + _EWMA_WEIGHT * (duration - avg)
                )
            if chunk:
                spawn = pool.fill()
        host = pool.host
        where = f"worker process {worker.pid}" if host is None else f"host {host!r}"
        if completions and pool.drain_stdio is not None:
            pool.drain_stdio()  # (workers flush their output before they answer)
        complete(pool.stats, completions, where, host)
        if spawn:
            pool.start_workers(spawn)
        if chunk:
            return 1
        worker.eof = True
        if worker in self.watching:
            self.selector.unregister(worker.result_fd)
        return -1

    def _on_eof(self, worker: Worker) -> None:
        """Its result pipe closed: reap it now if it has exited, else soon (sentinel, poll)."""
        if worker.proc.poll() is not None:
            self._reap(worker)
        else:
            self.eof_at.setdefault(worker, time.monotonic())

    @staticmethod
    def _receive_segment(worker: Worker) -> int | OSError:
        """The descriptor of a result's segment (sent before its frame), or why it is missing."""
        try:
            if worker.channel is None:  # pragma: no cover - protocol bug
                raise OSError("no descriptor socket")
            return worker.channel.receive(1)[0]
        except OSError as exc:
            return exc

    # -- reaping ----------------------------------------------------------------------

    def _reap(self, worker: Worker) -> None:
        """The worker's process has exited: deliver its last results, then settle its tasks."""
        if worker.state is State.DEAD:
            return
        while self._read(worker) > 0:  # everything it wrote before it died
            pass
        self.eof_at.pop(worker, None)
        returncode = worker.proc.poll()
        if returncode is None:  # pragma: no cover - the sentinel fired, so it has exited
            worker.kill()
            returncode = worker.proc.wait()
        if worker.pidfd >= 0:
            if worker in self.watching:
                self.selector.unregister(worker.pidfd)
            os.close(worker.pidfd)
            worker.pidfd = -1
        if not worker.eof:
            worker.eof = True
            if worker in self.watching:
                self.selector.unregister(worker.result_fd)
        os.close(worker.result_fd)
        if worker.channel is not None:
            worker.channel.close()  # descriptors still in flight are freed with it
        failed: Failed = []
        cancelled: list[Task] = []
        pool = self.pool
        with pool.lock:
            self._close_task_fd(worker)
            self.watching.pop(worker, None)
            state = worker.state
            starting = state is State.STARTING
            worker.state = State.DEAD
            if worker in pool.workers:
                pool.workers.remove(worker)
            else:
                pool.leaving.remove(worker)
            pool.timed.pop(worker, None)
            tasks = list(worker.in_flight)
            worker.in_flight.clear()
            if tasks and state is not State.RETIRED:
                # The first unanswered task was running (or the worker never started).
                head = tasks.pop(0)
                if not head.discard:
                    if not worker.head_started and not head.future.set_running_or_notify_cancel():
                        pool.stats.task_finished(Outcome.CANCELLED)
                        head.release()
                    else:
                        error = WorkerDiedError(
                            death_message(worker.pid, returncode, callable_name(head.fn), starting)
                        )
                        failed.append((head, error))
                else:
                    head.release()
            for task in tasks:
                task.worker = None
            if pool.terminating:
                cancelled = tasks
            else:
                pool.pending.extendleft(reversed(tasks))
                pool.requeued += len(tasks)
            if starting:
                pool.startup_failures += 1
                if pool.startup_failures >= _STARTUP_FAILURE_LIMIT and pool.pending:
                    pool.fail_pending(
                        failed,
                        WorkerDiedError(
                            f"{pool.startup_failures} worker processes in a row failed to start "
                            f"(last exit code {returncode}); see their stderr"
                        ),
                    )
                    pool.startup_failures = 0
            spawn = pool.fill()
        pool.fail(failed)
        for task in cancelled:
            task.release()
            pool.stats.task_finished(Outcome.CANCELLED)
            if task.future.cancel():
                task.future.set_running_or_notify_cancel()
        if spawn:
            pool.start_workers(spawn)

    def _abort(self, exc: BaseException) -> None:
        pool = self.pool
        with pool.lock:
            pool.closing = True
            tasks = list(pool.pending)
            pool.pending.clear()
            for worker in (*pool.workers, *pool.leaving):
                tasks.extend(task for task in worker.in_flight if not task.discard)
                worker.in_flight.clear()
                worker.kill()
        error = RuntimeError(f"ProcessExecutor {pool.name!r} failed internally: {exc!r}")
        for task in tasks:
            complete_future(task.future, None, error)
