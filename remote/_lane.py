"""The direct lane: calls of a one-host embedded pool go straight to its PROCESS workers.

Why: on a pool of one local host whose slots are PROCESS workers (the default embedded
pool, ``remote/_process_link.py``) the scheduler thread has nothing to choose -- one
host, no other machine for a backup (backups go to *another* host), no network to
watch -- yet routing each call through it cost about twice PROCESS's per-call overhead
(issue 9: a bundle, an attempt, two queue hops and their bookkeeping on a third thread
that shares the GIL). The lane keeps what REMOTE adds on such a pool and drops the hop:

- ``RemoteExecutor.submit`` hands the call to the host's PROCESS pool itself. The call's
  future is a :class:`LaneFuture`, which the pool completes directly, as it completes a
  PROCESS future: no handle, no event, no other thread in between.
- What the scheduler keeps per call (done counts, durations and the host's speed, the
  attempt log behind ``stats()`` and the timeline) is *booked* by the future, under its
  own lock, before it wakes its waiters; the scheduler takes the booked records in
  batches, and always before it answers ``stats()``/``status()`` or draws a progress
  line, so they include every call whose result a caller has seen.
- Anything abnormal is the scheduler's again, with all of its semantics: an attempt
  whose worker died, or that ran past its timeout, is *adopted* -- the scheduler builds
  the call's bundle with that attempt already ended, then retries it (ending as
  :class:`~parallelize.PoisonedCallError` after ``max_attempts``) or fails it exactly as
  if it had dispatched the attempt itself. From then on the future is an ordinary
  :class:`~remote._remote_future.RemoteFuture` of that bundle.

The lane is open only while the scheduler says so (its one host UP on a ProcessLink); a
submit that finds it closed, or whose pool refuses the call (closing), goes through the
scheduler as before. Nothing here decides anything the scheduler owns.

Threads and locks: ``submit`` and ``cancelled`` run on callers' threads, the future's
``set_result``/``set_exception`` on the pool's result thread (or a thread that kills
workers), ``open``/``close``/``take_done`` on the scheduler thread. ``_lock`` guards
``_executor`` and ``_done``; ``_calls`` (attempt id -> future in the pool) is changed
by single dict operations only. Lock order: a future's condition, then ``_lock``.
Whoever removes a future from ``_calls`` (its answer, a cancel that won, or the
hand-over of a failed attempt) is the one that reports it: a call is counted once.
"""

from __future__ import annotations

import itertools
import mmap
import threading
from collections.abc import Callable
from concurrent.futures import InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED
from typing import TYPE_CHECKING, Any

from parallelize import RemoteTraceback, TaskTimeoutError, WorkerDiedError
from parallelize.ext import (
    Outcome,
    PickledCall,
    ProcessExecutor,
    ProcessFuture,
    TaskStats,
    callable_name,
)

from ._remote_future import RemoteFuture

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = [
    "BOOKED_CANCELLED",
    "BOOKED_FAILED",
    "BOOKED_SUCCEEDED",
    "BOOK_BATCH",
    "DirectLane",
    "LaneDone",
    "LaneFailure",
    "LaneFuture",
]

# Booked records the scheduler is woken for (it also takes them on its own tick, before
# any status or stats, and when the lane goes idle).
BOOK_BATCH = 256
_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)

# (bundle id, attempt id, run seconds (0: never ran), outcome (one of the codes below),
# end on the scheduler's clock, pid of the worker that ran it (0: none)). A plain tuple of
# numbers, one per call: the cyclic GC stops tracking such a tuple the first time it sees
# it, so a batch waiting to be booked never adds to its full collections.
LaneDone = tuple[int, int, float, int, float, int]
BOOKED_SUCCEEDED, BOOKED_FAILED, BOOKED_CANCELLED = 0, 1, 2
_CODES = {
    Outcome.SUCCEEDED: BOOKED_SUCCEEDED,
    Outcome.FAILED: BOOKED_FAILED,
    Outcome.CANCELLED: BOOKED_CANCELLED,
}


class LaneFailure:
    """A lane call whose attempt was lost or timed out: the scheduler adopts it."""

    __slots__ = ("future", "lost", "reason")

    def __init__(self, future: LaneFuture, lost: bool, reason: str) -> None:
        self.future = future
        self.lost = lost  # True: its worker died; False: it ran past its timeout
        self.reason = reason


class LaneFuture(RemoteFuture, ProcessFuture[Any]):
    """The future of a call on the lane, completed by the PROCESS pool itself.

    While ``lane`` is set (the call is in the pool) an answer is booked before waiters
    wake, and a lost or timed-out attempt is handed to the scheduler instead of
    completing the future; once handed over (``lane`` is None), it is the plain
    :class:`RemoteFuture` of the bundle the scheduler made of it."""

    # Defaults on the class: one submit sets only what differs (a few stores per call).
    lane: DirectLane | None = None
    attempt_id = 0
    worker_pid = 0  # set by the pool with run_seconds
    started_at: float | None = None  # on the scheduler's clock
    _skip: tuple[bytearray | mmap.mmap, int] | None = None

    def __init__(
        self,
        scheduler: Scheduler,
        call: PickledCall,
        bundle_id: int,
        timeout: float | None,
    ) -> None:
        super().__init__(scheduler)
        # Dropped once the call has left the lane: a caller may keep many futures, and
        # the pickled arguments are not theirs to keep (the scheduler's bundles drop theirs).
        self.call: PickledCall | None = call
        self.bundle_id = bundle_id
        self.timeout = timeout

    @property
    def fn_name(self) -> str:
        return "(a call)" if self.call is None else callable_name(self.call.fn)

    def drop_call(self) -> PickledCall:
        """The pickled call, which this future no longer holds (an invariant: once)."""
        call, self.call = self.call, None
        if call is None:
            raise RuntimeError(f"lane call {self.attempt_id}: its pickled call was dropped")
        return call

    def set_skip_flag(self, flags: bytearray | mmap.mmap, position: int) -> None:
        """Where the pool wants a byte set to 1 if this call is cancelled while it waits
        in a worker behind another (as ``RunHandle.set_skip_flag``: no callback per call)."""
        self._skip = (flags, position)
        if self.cancelled():  # cancelled before the pool asked: look again
            flags[position] = 1

    def _tell_scheduler(self) -> None:
        skip = self._skip
        if skip is not None:
            skip[0][skip[1]] = 1
        lane = self.lane
        if lane is not None:
            lane.cancelled(self)
        else:  # handed over: the scheduler's bundle (or, until adopted, nothing to tell)
            super()._tell_scheduler()

    def set_running_or_notify_cancel(self) -> bool:
        lane = self.lane
        if lane is not None:  # when its attempt started, should it be lost or time out
            self.started_at = lane.clock()
        return super().set_running_or_notify_cancel()

    def set_result(self, result: Any) -> None:
        lane = self.lane
        if lane is None:
            super().set_result(result)
        else:
            self._answer(lane, result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        lane = self.lane
        if lane is None or exception is None:
            super().set_exception(exception)
        elif isinstance(exception.__cause__, RemoteTraceback):  # raised by the call itself
            self._answer(lane, None, exception)
        elif isinstance(exception, WorkerDiedError):
            self._hand_over(lane, LaneFailure(self, True, str(exception)))
        elif isinstance(exception, TaskTimeoutError):
            ran = float(exception.timeout or 0.0)
            self._hand_over(lane, LaneFailure(self, False, f"timed out after {ran:.3g} s"))
        else:  # an unpicklable or unreadable result: the call's failure, as under PROCESS
            self._answer(lane, None, exception)

    def _answer(self, lane: DirectLane, value: Any, error: BaseException | None) -> None:
        # Future.set_result/set_exception, with the booking inside the same locked step:
        # a stop() cannot slip in between, and no waiter wakes before it is booked.
        state: Any = self
        with state._condition:
            if state._state in _DONE:  # stopped or cancelled first: the pool ignores this
                raise InvalidStateError(f"{state._state}: {self!r}")
            self.lane = None
            self._skip = None  # (its place in the worker's flags goes to later calls)
            lane.answered(self, Outcome.SUCCEEDED if error is None else Outcome.FAILED)
            if error is None:
                state._result = value
            else:
                state._exception = error
            state._state = FINISHED
            for waiter in state._waiters:
                if error is None:
                    waiter.add_result(self)
                else:
                    waiter.add_exception(self)
            state._condition.notify_all()
        state._invoke_callbacks()

    def _hand_over(self, lane: DirectLane, failure: LaneFailure) -> None:
        state: Any = self
        with state._condition:
            if state._state in _DONE:
                raise InvalidStateError(f"{state._state}: {self!r}")
            self.lane = None
            self._skip = None  # a stop() from now on is the scheduler's, not this run's
            if not lane.forget(self):
                return
        lane.adopt(failure)


class DirectLane:
    """The lane of one executor (see the module doc). Created closed."""

    def __init__(
        self,
        stats: TaskStats,
        post: Callable[[tuple[Any, ...]], None],
        adopt: Callable[[LaneFailure], None],
        attempt_ids: itertools.count[int],
        clock: Callable[[], float],
    ) -> None:
        self._stats = stats
        self._post = post  # puts a message on the scheduler's queue
        self.adopt = adopt  # hands a failed call to the scheduler (or fails it if closed)
        self._attempt_ids = attempt_ids  # shared with the scheduler: ids stay unique
        self.clock = clock  # the scheduler's
        self._lock = threading.Lock()
        self._executor: ProcessExecutor | None = None
        self._calls: dict[int, LaneFuture] = {}
        self._done: list[LaneDone] = []
        self.wake_when_idle = False  # set by the scheduler when it stops

    # -- the scheduler's side -------------------------------------------------------

    def open(self, executor: ProcessExecutor) -> None:
        with self._lock:
            self._executor = executor

    def close(self) -> None:
        """No new calls (those in the pool still report: the host's link kills them if it
        is closed, and their lost attempts are adopted)."""
        with self._lock:
            self._executor = None

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    @property
    def in_flight(self) -> int:
        return len(self._calls)  # (a snapshot: status and idle checks)

    @property
    def has_done(self) -> bool:
        return bool(self._done)

    def take_done(self) -> list[LaneDone]:
        with self._lock:
            done, self._done = self._done, []
        return done

    def cancel_queued(self) -> int:
        """Cancel the calls still waiting in the pool (``shutdown(cancel_futures=True)``):
        a plain ``cancel()``, which only a call that has not started accepts."""
        return sum(1 for future in list(self._calls.values()) if future.cancel())

    # -- callers' side ----------------------------------------------------------------

    def submit(self, future: LaneFuture) -> bool:
        """Run the call on the lane; False if the lane is closed (use the scheduler)."""
        executor = self._executor
        if executor is None:
            return False
        attempt_id = future.attempt_id = next(self._attempt_ids)
        call = future.call
        if call is None:
            raise RuntimeError(f"lane call {attempt_id}: submitted without its pickled call")
        future.lane = self
        self._calls[attempt_id] = future
        try:
            executor.submit_run(call, future, future.timeout)
        except RuntimeError:  # the pool is closing (its host went down a moment ago)
            future.lane = None
            future.call = None  # (the scheduler's bundle holds it)
            self._calls.pop(attempt_id, None)
            return False
        return True

    def cancelled(self, future: LaneFuture) -> None:
        """The caller cancelled or stopped the call's future (its worker is killed if it
        runs): book it, unless its answer or a hand-over got there first."""
        future.lane = None
        if self._calls.pop(future.attempt_id, None) is None:
            return
        future.drop_call().close()
        self._stats.task_finished(Outcome.CANCELLED, None)
        self._book((future.bundle_id, future.attempt_id, 0.0, BOOKED_CANCELLED, self.clock(), 0))

    # -- the pool's result thread (under the future's lock) ----------------------------

    def answered(self, future: LaneFuture, outcome: Outcome) -> None:
        if self._calls.pop(future.attempt_id, None) is None:
            return
        future.drop_call().close()
        seconds = future.run_seconds
        self._stats.task_finished(outcome, seconds)
        self._book(
            (
                future.bundle_id,
                future.attempt_id,
                seconds,
                _CODES[outcome],
                self.clock(),
                future.worker_pid,
            )
        )

    def forget(self, future: LaneFuture) -> bool:
        """A failed attempt leaves the lane (to be adopted); False if it had left."""
        return self._calls.pop(future.attempt_id, None) is not None

    def _book(self, done: LaneDone) -> None:
        with self._lock:
            self._done.append(done)
            full = len(self._done) == BOOK_BATCH
        # Wake the scheduler for a batch, or for the last call in flight when it waits for
        # the lane to drain (shutdown); its own tick books the rest (see _scheduler).
        if full or (self.wake_when_idle and not self._calls):
            self._post(("lane",))
