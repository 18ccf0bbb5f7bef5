"""One timer thread for every deadline of the process (THREAD timeouts, retry backoffs).

``call_later(delay, fn)`` runs ``fn()`` on the timer thread after *delay* seconds and
returns a :class:`TimerHandle` whose ``cancel()`` drops it. The thread is started on
first use and keeps a heap of deadlines, so thousands of pending timeouts cost one
thread, not one ``threading.Timer`` each.

Ownership: the heap and the cancelled count belong to ``_Timers`` and are touched only
under its condition's lock; callbacks run on the timer thread *outside* that lock (so a
callback may schedule or cancel timers). Callbacks must be short: they complete futures
or submit a call, never wait.

Cancelled handles are removed lazily; when more than half of the heap is cancelled
(every timed call that finishes in time cancels its timer) the heap is rebuilt, so
long timeouts on many short calls do not accumulate memory.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from ._executor_base import ExitStage, at_fork_in_child

__all__ = ["TimerHandle", "call_later"]

_logger = logging.getLogger("parallelize")


class TimerHandle:
    """A scheduled callback; ``cancel()`` keeps it from running (if it has not yet)."""

    __slots__ = ("cancelled", "deadline", "fn", "seq")

    def __init__(self, deadline: float, seq: int, fn: Callable[[], object]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.fn: Callable[[], object] | None = fn
        self.cancelled = False

    def __lt__(self, other: TimerHandle) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)

    def cancel(self) -> None:
        _timers.cancel(self)


class _Timers:
    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._heap: list[TimerHandle] = []
        self._cancelled = 0
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, delay: float, fn: Callable[[], object]) -> TimerHandle:
        with self._condition:
            handle = TimerHandle(time.monotonic() + max(0.0, delay), next(self._seq), fn)
            heapq.heappush(self._heap, handle)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="parallelize-timer", daemon=True
                )
                self._thread.start()
            elif self._heap[0] is handle:
                self._condition.notify()
        return handle

    def cancel(self, handle: TimerHandle) -> None:
        with self._condition:
            if handle.cancelled or handle.fn is None:
                return
            handle.cancelled = True
            handle.fn = None
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [h for h in self._heap if not h.cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _run(self) -> None:
        while True:
            with self._condition:
                while True:
                    while self._heap and self._heap[0].cancelled:
                        heapq.heappop(self._heap)
                        self._cancelled -= 1
                    if not self._heap:
                        self._condition.wait()
                        continue
                    wait = self._heap[0].deadline - time.monotonic()
                    if wait <= 0:
                        break
                    self._condition.wait(wait)
                handle = heapq.heappop(self._heap)
                fn, handle.fn = handle.fn, None
            if fn is None:
                continue
            try:
                fn()
            except BaseException:  # a broken callback must not stop every other timer
                _logger.exception("a parallelize timer callback failed")
            del fn

    def after_fork_in_child(self) -> None:
        # The timer thread does not exist in a forked child; start afresh there.
        self.__init__()  # type: ignore[misc]


_timers = _Timers()

# Last in the one fork hook: a hook before it (or an executor) may schedule a timer.
at_fork_in_child(_timers.after_fork_in_child, ExitStage.TIMERS)


def call_later(delay: float, fn: Callable[[], object]) -> TimerHandle:
    """Run ``fn()`` on the timer thread in *delay* seconds; returns a handle to cancel it."""
    return _timers.schedule(delay, fn)
