"""The small base every parallelize executor shares.

It adds to :class:`concurrent.futures.Executor` what a user of a long-running
pool wants to see: how many tasks are live, how long they took
(:meth:`BaseExecutor.stats`), a summary on ``shutdown(quiet=False)``, and
:meth:`BaseExecutor.shutdown_if_idle`. Subclasses implement ``submit`` (calling
``_check_open`` and recording into ``self._stats``), ``_shutdown_impl`` and
``_cancel_queued``.

The lifecycle of every executor lives here too: one registry of live executors
(:func:`live_executors`), one exit hook (a threading exit hook, so before ``atexit``
handlers, as concurrent.futures) and one fork hook for the whole process. In a forked
child each live executor makes itself inert (``_after_fork_in_child``); module state that
outlives executors or belongs to none (worker threads, pools and schedulers of executors
dropped without shutdown, the default executors, the timer) plugs into the two hooks by
:class:`ExitStage` (:func:`at_threads_exit`, :func:`at_fork_in_child`), which fixes their
order.
"""

from __future__ import annotations

import abc
import enum
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from ._call_options import DEFAULT_OPTIONS, CallOptions
from ._stats import ExecutorStats, TaskStats

__all__ = [
    "BaseExecutor",
    "ExitStage",
    "abandon_work_at_exit",
    "at_fork_in_child",
    "at_threads_exit",
    "interpreter_exiting",
    "live_executors",
    "waits_at_exit",
]

T = TypeVar("T")

_live_executors: weakref.WeakSet[BaseExecutor] = weakref.WeakSet()
_live_lock = threading.Lock()
# Cleared by Ctrl-C during a wait: the user wants out, so at interpreter exit
# executors stop their workers instead of waiting for running tasks.
_wait_at_exit = True


# Set when the interpreter starts to exit (before atexit handlers run), as
# concurrent.futures does: from then on submit() raises RuntimeError.
_exiting = False


class ExitStage(enum.IntEnum):
    """When a module's hook runs in the one exit hook (and the one fork hook), in order.

    The order is what makes calls finish exactly once: an executor that runs its calls on
    another one (REMOTE's embedded pool runs on a ProcessExecutor) finishes before the
    pools under it close, and the default executors go last, when they are idle.
    """

    THREADS = 10  #: THREAD workers finish their queues (first, as ThreadPoolExecutor's)
    SCHEDULERS = 20  #: REMOTE schedulers finish their calls, over links still open
    POOLS = 30  #: process pools finish their queues and reap their workers
    DEFAULTS = 40  #: the default executors of @parallelize are shut down (idle by now)
    TIMERS = 50  #: module state that any of the above may still use (fork only)


# The one ordered list of module-level hooks each of the two process-wide hooks below
# calls: (stage, order of registration, hook). Module-level, not per executor, because
# what they finish outlives the executors (the threads, pools and schedulers of an
# executor dropped without shutdown still run its queue, as concurrent.futures does) or
# belongs to no executor (the default executors' table, the timer thread).
_exit_hooks: list[tuple[int, int, Callable[[], None]]] = []
_fork_hooks: list[tuple[int, int, Callable[[], None]]] = []


def interpreter_exiting() -> bool:
    """Whether the interpreter has begun to exit (new submissions are refused)."""
    return _exiting


def at_threads_exit(hook: Callable[[], None], stage: ExitStage = ExitStage.SCHEDULERS) -> None:
    """Run *hook* when the interpreter exits, before non-daemon threads are joined, at
    *stage* (hooks of one stage run in the order they were registered).

    That is where ``ThreadPoolExecutor`` and ``ProcessPoolExecutor`` wait for their work:
    before any ``atexit`` handler, so that a late ``atexit`` submission is refused, and
    before other libraries' ``atexit`` handlers (paramiko's closes every SSH connection).
    """
    _exit_hooks.append((stage, len(_exit_hooks), hook))
    _exit_hooks.sort()


def at_fork_in_child(hook: Callable[[], None], stage: ExitStage) -> None:
    """Run *hook* in a forked child, after every live executor has made itself inert there
    (:meth:`BaseExecutor._after_fork_in_child`), at *stage*."""
    _fork_hooks.append((stage, len(_fork_hooks), hook))
    _fork_hooks.sort()


def _on_threads_exit() -> None:
    """The one exit hook: refuse new work, then each stage's hooks in order.

    A Ctrl-C while a hook waits must not skip the stages after it (their workers would
    be left to die with the interpreter): the rest stop at once instead of waiting."""
    global _exiting
    _exiting = True
    interrupted: KeyboardInterrupt | None = None
    for _, _, hook in list(_exit_hooks):
        try:
            hook()
        except KeyboardInterrupt as exc:
            interrupted = exc
            abandon_work_at_exit()
        except Exception:  # a bug in one hook: report it, and still run the others
            import traceback

            traceback.print_exc()
    if interrupted is not None:
        raise interrupted


def abandon_work_at_exit() -> None:
    """Make interpreter exit stop workers at once instead of waiting for their tasks."""
    global _wait_at_exit
    _wait_at_exit = False


def waits_at_exit() -> bool:
    """Whether interpreter exit waits for queued and running tasks (the default).

    Not after a Ctrl-C during a wait (``abandon_work_at_exit``), nor when the program is
    ending on a KeyboardInterrupt it did not catch, wherever it landed: the interpreter
    records that exception (``sys.last_value``) before it runs the exit hooks. (A Ctrl-C
    that arrives while a wait is still setting up never reaches the wait's handler.)"""
    if not _wait_at_exit:
        return False
    if hasattr(sys, "ps1") or "IPython" in sys.modules:
        # interactive: sys.last_value may be a Ctrl-C of long ago, not the reason for exiting
        return True
    last = getattr(sys, "last_value", None) or getattr(sys, "last_exc", None)
    return not isinstance(last, KeyboardInterrupt)


def _after_fork_in_child() -> None:
    """The one fork hook: every executor alive at fork time gets its say in the child.

    Their threads and pipes belong to the parent, so each type either makes itself
    inert (the default executors of @parallelize are then re-created on first use)
    or refuses the next submit with the fix, instead of queueing work nobody runs."""
    global _live_lock
    _live_lock = threading.Lock()  # another thread of the parent may have held it
    for executor in list(_live_executors):
        executor._after_fork_in_child()
    for _, _, hook in list(_fork_hooks):
        hook()


def live_executors() -> list[BaseExecutor]:
    """Every executor created in this process and not yet shut down."""
    with _live_lock:
        return [e for e in _live_executors if not e._shutdown]


class BaseExecutor(Executor, abc.ABC):
    """A :class:`concurrent.futures.Executor` with task statistics.

    Lock order: a subclass's own locks may be held while calling into
    ``self._stats`` (whose lock is a leaf), never the reverse.
    """

    def __init__(self, *, name: str) -> None:
        self.name = name
        self._stats = TaskStats()
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        self._created_in = os.getpid()
        self._forked_away = False
        with _live_lock:
            _live_executors.add(self)

    # -- public API -------------------------------------------------------

    @property
    def live_tasks(self) -> int:
        """Tasks submitted and not yet finished (queued or running)."""
        return self._stats.live

    def stats(self) -> ExecutorStats:
        """A snapshot of counters and task durations; see :class:`ExecutorStats`."""
        return self._stats.snapshot(self.name)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, quiet: bool = True
    ) -> None:
        """Stop accepting work and release the workers.

        With *wait*, block until running and queued tasks have finished. With
        *cancel_futures*, queued tasks that have not started are cancelled
        first. With ``quiet=False``, print the :meth:`stats` summary once the
        executor has stopped. Calling it again is harmless.
        """
        with self._shutdown_lock:
            already = self._shutdown
            self._shutdown = True
        if not already:
            self._shutdown_impl(wait=wait, cancel_futures=cancel_futures)
        elif wait:
            self._join()
        if not quiet:
            print(self.stats().format(), flush=True)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """As :meth:`concurrent.futures.Executor.map`; *chunksize* must be a positive integer.

        Calls are submitted one by one whatever *chunksize* (the PROCESS and
        REMOTE executors batch small calls themselves); it is checked so that
        code written for ``ProcessPoolExecutor`` behaves the same.
        """
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a positive integer, got {chunksize!r}")
        return super().map(fn, *iterables, timeout=timeout)

    def submit_with(
        self, options: CallOptions, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Future[T]:
        """Submit one call with per-call *options* (what ``@parallelize(timeout=...)`` sets).

        Retries are not the executor's job (the decorator does them). This base
        version handles calls that need nothing special and refuses ``timeout=``
        with a clear error; executors that support it override this method.
        """
        options = options.for_executor()
        if options.timeout is not None and not self.supports_timeout:
            raise TypeError(
                f"{type(self).__name__} cannot enforce timeout=: use method=THREAD, "
                "PROCESS or REMOTE, or drop the option"
            )
        return self.submit(fn, *args, **kwargs)

    def submit_batch(
        self,
        fn: Callable[..., T],
        calls: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
        options: CallOptions = DEFAULT_OPTIONS,
    ) -> list[Future[T]]:
        """Submit many calls of *fn* (``(args, kwargs)`` each) at once; one future per call.

        What ``f.map(...)`` uses. This version submits them one by one; executors
        that can enqueue many calls more cheaply override it.
        """
        if options.for_executor().is_default:
            return [self.submit(fn, *a, **k) for a, k in calls]
        return [self.submit_with(options, fn, *a, **k) for a, k in calls]

    #: Whether ``submit_with`` enforces ``timeout=`` (subclasses that do set True).
    supports_timeout = False

    def shutdown_if_idle(self) -> bool:
        """Shut down (without waiting) if no task is queued or running.

        Returns True if the executor is now shut down.
        """
        with self._shutdown_lock:
            if self._shutdown:
                return True
            if self.live_tasks:
                return False
            self._shutdown = True
        self._shutdown_impl(wait=False, cancel_futures=False)
        return True

    def cancel_queued(self) -> int:
        """Cancel every task that has not started yet; returns how many were cancelled."""
        return self._cancel_queued()

    @property
    def is_shutdown(self) -> bool:
        return self._shutdown

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"{self.live_tasks} live tasks"
        return f"<{type(self).__name__} {self.name!r}: {state}>"

    # -- for subclasses ---------------------------------------------------

    #: Set on an executor that is a part of another one (REMOTE's embedded pool runs on a
    #: ProcessExecutor): the outer executor refuses late submissions itself, and must still
    #: be able to run the calls it finishes at exit after the interpreter began to exit.
    serves_another_executor = False

    def _check_open(self) -> None:
        if _exiting and not self.serves_another_executor:
            raise RuntimeError(
                f"cannot submit to {type(self).__name__} {self.name!r}: the interpreter is "
                "shutting down (as with concurrent.futures, work cannot be scheduled from an "
                "atexit handler)"
            )
        if self._forked_away:
            raise RuntimeError(
                f"{type(self).__name__} {self.name!r} was created in process {self._created_in} "
                "and cannot be used in a forked child (its workers belong to the parent). "
                f"Fix: create a new {type(self).__name__} in the child, or use @parallelize, "
                "whose default executors are re-created after fork."
            )
        if self._shutdown:
            raise RuntimeError(
                f"cannot submit to {type(self).__name__} {self.name!r}: it has been shut down. "
                "Create a new executor, or use the default one through @parallelize."
            )

    @abc.abstractmethod
    def _shutdown_impl(self, *, wait: bool, cancel_futures: bool) -> None:
        """Release workers; called exactly once."""

    def _join(self) -> None:
        """Block until the workers have exited after an earlier shutdown (default: no-op)."""

    @abc.abstractmethod
    def _cancel_queued(self) -> int:
        """Cancel tasks that have not started; return how many."""

    def _after_fork_in_child(self) -> None:
        """Called once in a forked child (by the one fork hook below). The default marks
        the executor closed there, so that submit refuses with the fix; a subclass that
        holds threads, pipes or processes releases its copies too and calls this."""
        self._shutdown_lock = threading.Lock()
        self._shutdown = True
        self._forked_away = True


# threading's exit hooks run before atexit handlers and before non-daemon threads
# are joined; the hook exists since Python 3.9 (a private but stable API that
# concurrent.futures itself relies on).
threading._register_atexit(_on_threads_exit)  # type: ignore[attr-defined]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
