"""A thread pool executor with task statistics.

The design follows ``concurrent.futures.ThreadPoolExecutor`` (a shared
``SimpleQueue`` of work items, threads started on demand up to
``max_workers``, an idle semaphore so idle threads are reused before new ones
start) with the per-task work kept to the minimum, because the decorator's
whole overhead budget over the standard library is 30%.

Ownership: the queue is the only shared structure; ``_threads`` is only
touched under ``_shutdown_lock``; statistics have their own leaf lock.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from time import perf_counter
from typing import Any, TypeVar

from . import _share
from ._call_options import CallOptions
from ._errors import TaskTimeoutError
from ._executor_base import BaseExecutor, ExitStage, at_threads_exit, waits_at_exit
from ._pickling import callable_name
from ._stats import Outcome, TaskStats
from ._timer import call_later

__all__ = ["ThreadExecutor"]

T = TypeVar("T")

_WorkItem = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]
_STOP = None  # sentinel: each worker that sees it puts it back and exits
_executor_counter = itertools.count()


def _worker_loop(
    executor_ref: weakref.ReferenceType[ThreadExecutor],
    work_queue: queue.SimpleQueue[_WorkItem | None],
    idle: threading.Semaphore,
    stats: TaskStats,
) -> None:
    finished = stats.task_finished
    while True:
        item = work_queue.get()
        if item is None:  # _STOP
            work_queue.put(_STOP)
            return
        future, fn, args, kwargs = item
        del item
        if not future.set_running_or_notify_cancel():
            finished(Outcome.CANCELLED)
            continue
        start = perf_counter()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            finished(Outcome.FAILED, perf_counter() - start)
            future.set_exception(exc)
            # Break the reference cycle exc -> traceback -> this frame -> exc.
            del exc
        else:
            finished(Outcome.SUCCEEDED, perf_counter() - start)
            future.set_result(result)
            del result
        del future, fn, args, kwargs
        executor = executor_ref()
        if executor is None:
            # Dropped without shutdown(): keep running what was queued (the
            # executor's finaliser queued _STOP behind it), as ThreadPoolExecutor does.
            continue
        # Announce one idle thread so submit() reuses it instead of starting another;
        # once every thread exists nobody looks, so skip the (Python-level) semaphore.
        if len(executor._threads) < executor.max_workers:
            idle.release()
        del executor


# Every worker thread ever started and its queue, so that interpreter exit can
# wait for all of them, also those of executors dropped without shutdown(): threads
# outlive their executor, so this cannot be the registry of live executors.
_worker_queues: weakref.WeakKeyDictionary[threading.Thread, queue.SimpleQueue[Any]] = (
    weakref.WeakKeyDictionary()
)
_worker_queues_lock = threading.Lock()


def _stop_workers_at_exit() -> None:
    """Interpreter exit: let every thread finish the queued work, then join it.

    As ``ThreadPoolExecutor``: running and queued tasks complete. After a
    Ctrl-C during a wait the user wants out: queued work is dropped and running
    tasks are not waited for (the threads are daemons).
    """
    with _worker_queues_lock:
        items = list(_worker_queues.items())
    wait = waits_at_exit()
    for _, work_queue in items:
        work_queue.put(_STOP)
    if wait:
        for thread, _ in items:
            # A thread still running a call that timed out is not waited for: its caller
            # already has the TaskTimeoutError, and the call may never end (a daemon thread).
            _join_unless_overrunning(thread)


def _join_unless_overrunning(thread: threading.Thread) -> None:
    """Join *thread*, but give up once it runs a call past its timeout.

    Polls, because the call may pass its deadline while we wait (a join cannot be woken
    by anything but the thread's end); only shutdown and interpreter exit get here.
    """
    while thread.is_alive() and thread not in _overrunning:
        thread.join(0.05)


# Threads running a call past its timeout (see _Timed); only the thread itself and the
# timer thread touch an entry, and set operations are atomic under the GIL. A mark on a
# thread, not a registry of executors: what joins a thread (shutdown, exit) reads it to
# give up on a call nobody waits for any more.
_overrunning: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


at_threads_exit(_stop_workers_at_exit, ExitStage.THREADS)


class ThreadExecutor(BaseExecutor):
    """Runs calls on a pool of threads; a real :class:`concurrent.futures.Executor`.

    *max_workers* defaults to ``min(32, os.cpu_count() + 4)``. Threads are
    started on demand. As with ``ThreadPoolExecutor``, an executor dropped
    without ``shutdown()`` still runs its queued tasks, and interpreter exit
    waits for queued and running tasks (the threads are daemons only so that
    a Ctrl-C can abandon them).
    """

    def __init__(self, max_workers: int | None = None, *, name: str | None = None) -> None:
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
        super().__init__(name=name or f"thread-{next(_executor_counter)}")
        self.max_workers = max_workers
        self._queue: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        # Workers hold only this weak reference; when the executor is collected
        # without shutdown(), the callback tells them to stop after the queued work.
        work_queue = self._queue
        self._ref = weakref.ref(self, lambda _ref: work_queue.put(_STOP))

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; returns its :class:`concurrent.futures.Future`.

        Raises RuntimeError if the executor has been shut down.
        """
        future: Future[T] = Future()
        if _share.handles_exist:  # share() handles: the function gets the object itself
            args, kwargs = _share.unwrap_shared(args, kwargs)
        with self._shutdown_lock:
            self._check_open()
            self._stats.task_submitted()
            self._queue.put((future, fn, args, kwargs))
            if len(self._threads) < self.max_workers:
                self._maybe_start_thread()
        return future

    #: ``timeout=`` is enforced: the future fails at the deadline, the thread runs on.
    supports_timeout = True

    def submit_with(
        self, options: CallOptions, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Future[T]:
        """Submit one call with per-call *options*; only ``timeout`` means anything here.

        The deadline counts from when a worker thread starts the call. At the deadline
        the future fails with :class:`TaskTimeoutError`; the thread cannot be killed,
        so it runs the call to its end and its result is discarded (the thread is busy
        until then). ``backups`` and ``avoid_hosts`` do not apply to threads.
        """
        timeout = options.timeout
        if timeout is None:
            return self.submit(fn, *args, **kwargs)
        future: _TimedFuture[T] = _TimedFuture()
        if _share.handles_exist:
            args, kwargs = _share.unwrap_shared(args, kwargs)
        with self._shutdown_lock:
            self._check_open()
            self._stats.task_submitted()
            self._queue.put((future, _Timed(fn, timeout, future), args, kwargs))
            if len(self._threads) < self.max_workers:
                self._maybe_start_thread()
        return future

    def _maybe_start_thread(self) -> None:
        if self._idle.acquire(timeout=0):
            return
        count = len(self._threads)
        if count < self.max_workers:
            thread = threading.Thread(
                target=_worker_loop,
                args=(self._ref, self._queue, self._idle, self._stats),
                name=f"{self.name}_{count}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
            with _worker_queues_lock:
                _worker_queues[thread] = self._queue

    def _cancel_queued(self) -> int:
        cancelled = 0
        stop_seen = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # _STOP
                stop_seen = True
                continue
            if item[0].cancel():
                cancelled += 1
                self._stats.task_finished(Outcome.CANCELLED)
            else:  # already running elsewhere or done: cannot happen for queued items
                self._queue.put(item)
                break
        if stop_seen:
            self._queue.put(_STOP)
        return cancelled

    def _shutdown_impl(self, *, wait: bool, cancel_futures: bool) -> None:
        if cancel_futures:
            self._cancel_queued()
        self._queue.put(_STOP)
        if wait:
            self._join()

    def _join(self) -> None:
        current = threading.current_thread()
        for thread in list(self._threads):
            if thread is not current:
                _join_unless_overrunning(thread)

    def _after_fork_in_child(self) -> None:
        """Make this executor inert in a forked child: its threads do not exist there."""
        super()._after_fork_in_child()
        self._threads = []
        self._queue = queue.SimpleQueue()


class _TimedFuture(Future[T]):
    """The future of a call with a timeout: the first outcome wins.

    The worker sets the call's outcome when it returns, which may be after the
    timer has already failed the future; that late outcome is dropped.
    """

    def set_result(self, result: T) -> None:
        with contextlib.suppress(InvalidStateError):
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        with contextlib.suppress(InvalidStateError):
            super().set_exception(exception)


class _Timed:
    """Runs *fn* on the worker thread with a timer armed from the moment it starts."""

    __slots__ = ("fn", "future", "thread", "timeout")

    def __init__(self, fn: Callable[..., Any], timeout: float, future: Future[Any]) -> None:
        self.fn = fn
        self.timeout = timeout
        self.future = future
        self.thread: threading.Thread | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.thread = threading.current_thread()
        handle = call_later(self.timeout, self._expire)
        try:
            return self.fn(*args, **kwargs)
        finally:
            handle.cancel()
            _overrunning.discard(self.thread)

    def _expire(self) -> None:
        if not self.future.done():
            error = TaskTimeoutError(callable_name(self.fn), self.timeout, "thread", stopped=False)
            self.future.set_exception(error)
            if self.thread is not None:
                _overrunning.add(self.thread)
