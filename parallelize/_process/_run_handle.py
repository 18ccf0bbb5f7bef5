"""What the pool completes for a call: a :class:`TaskFuture` (the contract), and
:class:`RunHandle`, a light one for callers that are not waited on through a future.

``ProcessExecutor.submit`` gives each call a :class:`ProcessFuture`: callers wait on
it, so it carries a condition variable, waiter lists and done-callbacks. REMOTE's
embedded pool does not wait on its attempts: it wants one event posted to its
scheduler when an attempt ends, and the caller's own future is completed there.
Building and completing a full future per attempt (a condition, a re-entrant lock,
a callback list, a lambda, locked reads of the outcome) was a large share of that
pool's per-call cost, so it hands the pool a :class:`RunHandle` instead: the same
states and transitions the pool drives, one small lock, and one *on_done* call.

Threads: ``set_running_or_notify_cancel`` runs under the pool's lock on whichever
thread starts the call; ``cancel``/``stop`` on the owner's thread; ``set_result`` /
``set_exception`` on the pool's result thread (or a thread that kills workers).
``_lock`` makes each transition atomic and is never held while calling out.
"""

from __future__ import annotations

import enum
import mmap
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._dispatch import Pool

__all__ = ["RunHandle", "RunState", "TaskFuture"]


class TaskFuture(Protocol):
    """What the pool needs of a call's future (``concurrent.futures.Future`` has it)."""

    def cancelled(self) -> bool: ...
    def cancel(self) -> bool: ...
    def set_running_or_notify_cancel(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exception: BaseException | None) -> None: ...
    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...


class RunState(enum.Enum):
    PENDING = "pending"  # queued in the pool or behind another call in a worker
    RUNNING = "running"  # started in its worker
    CANCELLED = "cancelled"  # cancelled or stopped: any answer is dropped
    FINISHED = "finished"  # answered (value or error): on_done was called

    __hash__ = object.__hash__  # identity: Enum hashes the name (see remote._bundle)


_ALLOWED = {
    RunState.PENDING: (RunState.RUNNING, RunState.CANCELLED, RunState.FINISHED),
    RunState.RUNNING: (RunState.CANCELLED, RunState.FINISHED),
    RunState.CANCELLED: (),
    RunState.FINISHED: (),
}


class RunHandle:
    """A call in the pool, reported through callbacks rather than waited on.

    *on_done(value, error, run_seconds)* is called once when the call is answered (an
    error: it raised, its result could not be read, its worker died or it timed out),
    never after it was cancelled or stopped. *on_start()* is called when it starts in a
    worker (under the pool's lock: it must not block or call back into the pool).
    """

    __slots__ = (
        "_cancel_hooks",
        "_lock",
        "_on_done",
        "_on_start",
        "_pool",
        "_skip_flags",
        "_skip_position",
        "run_seconds",
        "state",
    )

    def __init__(
        self,
        on_done: Callable[[Any, BaseException | None, float], object],
        on_start: Callable[[], object] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._on_done = on_done
        self._on_start = on_start
        self._cancel_hooks: list[Callable[[Any], object]] | None = None
        self._pool: Pool | None = None
        self._skip_flags: bytearray | mmap.mmap | None = None
        self._skip_position = 0
        self.run_seconds = 0.0  # set by the pool before it completes the call
        self.state = RunState.PENDING

    def _move(self, to: RunState, *sources: RunState) -> bool:
        """Move to *to* if the state is one of *sources*; False (no change) otherwise."""
        with self._lock:
            if self.state not in sources:
                return False
            if to not in _ALLOWED[self.state]:  # a bug in this module's callers
                raise RuntimeError(f"run handle: illegal move {self.state.name} -> {to.name}")
            self.state = to
            return True

    # -- what the pool calls (TaskFuture) ---------------------------------------

    def cancelled(self) -> bool:
        return self.state is RunState.CANCELLED

    def set_running_or_notify_cancel(self) -> bool:
        if not self._move(RunState.RUNNING, RunState.PENDING):
            return False  # cancelled (or answered by a dead worker's last frames)
        self._started()
        return True

    def set_result(self, result: Any) -> None:
        if self._move(RunState.FINISHED, RunState.PENDING, RunState.RUNNING):
            self._report(result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        if exception is None:  # (the Future signature allows it; the pool never does it)
            exception = RuntimeError("the call failed without an exception")
        if self._move(RunState.FINISHED, RunState.PENDING, RunState.RUNNING):
            self._report(None, exception)

    # -- what a subclass may override: one object per call instead of a closure ----------

    def _started(self) -> None:
        if self._on_start is not None:
            self._on_start()

    def _report(self, value: Any, error: BaseException | None) -> None:
        self._on_done(value, error, self.run_seconds)

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        """Run *fn(self)* if the call is cancelled or stopped (the pool's only use: the
        worker's skip flag for a call waiting behind another)."""
        with self._lock:
            if self.state is not RunState.CANCELLED:
                if self.state is RunState.FINISHED:
                    return
                if self._cancel_hooks is None:
                    self._cancel_hooks = []
                self._cancel_hooks.append(fn)
                return
        fn(self)

    # -- what the owner calls ---------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the call if it has not started; True if it is cancelled now."""
        if self.state is RunState.CANCELLED:
            return True
        if not self._move(RunState.CANCELLED, RunState.PENDING):
            return False
        self._run_cancel_hooks()
        return True

    def stop(self) -> bool:
        """Cancel the call even if it runs (its worker is killed); False if answered."""
        if self.cancel():
            return True
        if not self._move(RunState.CANCELLED, RunState.RUNNING):
            return self.state is RunState.CANCELLED
        self._run_cancel_hooks()
        pool = self._pool
        if pool is not None:
            pool.stop_running(self)
        return True

    def set_skip_flag(self, flags: bytearray | mmap.mmap, position: int) -> None:
        """Where the pool wants a byte set to 1 if this call is cancelled while it waits in
        a worker behind another (the worker then skips it). The same as registering a
        callback that sets it, without a closure and a list per call on the hot path."""
        self._skip_position = position
        self._skip_flags = flags
        # A cancel on another thread between the pool's own check and this line read no
        # flag: look again (the byte may be set twice, which is harmless).
        if self.state is RunState.CANCELLED:
            flags[position] = 1

    def _run_cancel_hooks(self) -> None:
        flags = self._skip_flags
        if flags is not None:
            flags[self._skip_position] = 1
        with self._lock:
            hooks, self._cancel_hooks = self._cancel_hooks, None
        for hook in hooks or ():
            hook(self)
