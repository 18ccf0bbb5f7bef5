"""Sending calls to workers: how many each holds, and the batch frames that carry them.

A mixin of ``_dispatch.Pool`` (split out to keep each module to one job); the state it
touches and the rules (lock, prefetch depth, "When a call starts") are described in
``_dispatch``. Every method here runs with the pool's lock held.
"""

from __future__ import annotations

import pickle
import threading
from collections import deque
from typing import TYPE_CHECKING

from .._stats import Outcome, TaskStats
from ._handles import State, Task, Worker

if TYPE_CHECKING:
    from ._results import ResultLoop

__all__ = ["BatchSender"]

_PREFETCH_WINDOW = 0.002  # seconds of work a worker should hold
_PER_TASK_OVERHEAD = 15e-6  # unmeasured per-task cost in the worker (unpickle, pickle, write)
_MAX_DEPTH = 64
_FUNCTION_CACHE_SIZE = 1024  # functions a worker keeps unpickled (mirrored by the parent)


class BatchSender:
    """The sending half of ``Pool`` (see the module docstring)."""

    if TYPE_CHECKING:  # state and methods of Pool that these methods use
        stats: TaskStats
        max_workers: int
        max_tasks: int | None
        avg_duration: float | None
        pending: deque[Task]
        workers: list[Worker]
        sent_path: list[str]
        path_version: int
        results: ResultLoop | None

        def wake(self) -> None: ...
        def start_head(self, worker: Worker) -> None: ...
        def retire(self, worker: Worker, state: State) -> None: ...
        def _reserve(self) -> int: ...

    def _depth(self) -> int:
        avg = self.avg_duration
        if avg is None:
            return 1
        return max(1, min(_MAX_DEPTH, int(_PREFETCH_WINDOW / (avg + _PER_TASK_OVERHEAD))))

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
