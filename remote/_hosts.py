"""Scheduler-side state of one host: its state machine, slots, speed and backoff.

Owned by the scheduler thread (``remote/_scheduler.py``): nothing here locks.

Host states (every other transition raises :class:`IllegalTransitionError`)::

    IDLE -> CONNECTING          first work for the pool (hosts connect lazily, in parallel)
    CONNECTING -> UP            the agent said hello and passed the version check
    CONNECTING -> DOWN          a transient failure (unreachable, timeout, link lost)
    CONNECTING -> BROKEN        a permanent failure (host key, auth, Python version, ...)
    UP -> SUSPECT               the link heard nothing past its suspect threshold
    SUSPECT -> UP               heard again
    UP | SUSPECT -> DOWN        the connection broke or stalled past stall_timeout
    DOWN | BROKEN -> CONNECTING the backoff elapsed (BROKEN waits longer: a person must act)
    any -> CLOSED               the scheduler is tearing down (terminal)

Only UP hosts get new attempts. A SUSPECT host keeps its running attempts (they may
still finish) but each of them gets a backup on a healthy host at once.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque

from ._bundle import Attempt
from ._errors import HostUnavailableError, IllegalTransitionError
from ._heartbeat import percentile
from ._link import HostLink, HostSpec

__all__ = ["Host", "HostState"]

_HOST_SAMPLES = 100  # recent attempt durations per host, for p50/p95 in the status
_EWMA = 0.3  # weight of the newest duration in a host's speed estimate
# Hosts whose link queues attempts behind running ones (``prefetches``: the embedded pool's
# PROCESS workers) take up to ``depth`` attempts per slot, so that short calls reach the
# workers in batches instead of one round trip per call. The depth follows the calls'
# measured run time, as the PROCESS pool's own does: about _PREFETCH_WINDOW seconds of
# work queued per slot, never more than _MAX_DEPTH attempts, none for calls that take long
# (a queued call cannot move to another host that frees up first).
_MAX_DEPTH = 64
_PREFETCH_WINDOW = 0.002  # seconds
_PER_CALL = 15e-6  # seconds a call costs a worker beyond its run time (unmeasured)


class HostState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"
    BROKEN = "broken"
    CLOSED = "closed"
    # Members are singletons compared by identity: hash them as such (Enum hashes the
    # name in Python code; these are dict keys on the hot paths of every call).
    __hash__ = object.__hash__

    @property
    def connected(self) -> bool:
        return self in (HostState.UP, HostState.SUSPECT)


_HOST_TRANSITIONS: dict[HostState, frozenset[HostState]] = {
    HostState.IDLE: frozenset({HostState.CONNECTING, HostState.CLOSED}),
    HostState.CONNECTING: frozenset(
        {HostState.UP, HostState.DOWN, HostState.BROKEN, HostState.CLOSED}
    ),
    HostState.UP: frozenset({HostState.SUSPECT, HostState.DOWN, HostState.CLOSED}),
    HostState.SUSPECT: frozenset({HostState.UP, HostState.DOWN, HostState.CLOSED}),
    HostState.DOWN: frozenset({HostState.CONNECTING, HostState.CLOSED}),
    HostState.BROKEN: frozenset({HostState.CONNECTING, HostState.CLOSED}),
    HostState.CLOSED: frozenset(),
}


class Host:
    """One host of the pool as the scheduler sees it."""

    def __init__(self, spec: HostSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.name = spec.name
        self.weight = spec.weight
        self.slots = max(1, spec.slots)
        self.state = HostState.IDLE
        self.link: HostLink | None = None
        self.gen = 0  # bumped on every (re)connect: events of an older link are ignored
        self.reason = ""
        self.error: HostUnavailableError | None = None  # the last connect failure
        self.running: dict[int, Attempt] = {}
        self._free_ids = list(range(self.slots))
        # Slot ids past ``slots``: attempts queued behind running ones (see _MAX_DEPTH).
        self.prefetches = False
        self.depth = 1
        self._queue_ids: list[int] = []
        # Queue places the current depth does not allow (the host may use
        # ``len(_queue_ids) - _unused_queue_ids`` more: slots * (depth - 1) in all).
        self._unused_queue_ids = 0
        self.run_estimate: float | None = None  # EWMA of run times the workers measured
        self.backoff = 0.0
        self.retry_at = 0.0
        self.durations: deque[float] = deque(maxlen=_HOST_SAMPLES)
        self.estimate: float | None = None  # EWMA of attempt durations (seconds)
        self.last_start = 0.0  # clock time the last attempt started here
        self.done = 0
        self.lost = 0
        self.warned: set[str] = set()  # permanent-error kinds already warned about
        self._percentiles: tuple[int, float | None, float | None] = (0, None, None)
        self.changes = 0  # bumped by the host table on every state or slot change
        self.status_cache: tuple[int, object] | None = None  # (changes, HostStatus)

    def transition(self, new: HostState) -> None:
        if new not in _HOST_TRANSITIONS[self.state]:
            raise IllegalTransitionError(f"host {self.name}: {self.state.name} -> {new.name}")
        self.state = new

    @property
    def free_slots(self) -> int:
        # Asked several times per call on the scheduler's hot path: one subtraction. Queue
        # places beyond the current depth stay in reserve (``_unused_queue_ids``).
        if self.state is not HostState.UP:
            return 0
        room = len(self._queue_ids) - self._unused_queue_ids
        return len(self._free_ids) + room if room > 0 else len(self._free_ids)

    def take_slot(self) -> int:
        if self._free_ids:
            return heapq.heappop(self._free_ids)
        return heapq.heappop(self._queue_ids)

    def release_slot(self, slot: int) -> None:
        heapq.heappush(self._free_ids if slot < self.slots else self._queue_ids, slot)

    def set_prefetches(self, prefetches: bool) -> None:
        """Whether the host's link queues attempts (set when it connects; its slots are
        all free then)."""
        self.prefetches = prefetches
        self.depth = 1
        self._queue_ids = list(range(self.slots, self.slots * _MAX_DEPTH)) if prefetches else []
        self._unused_queue_ids = len(self._queue_ids)

    def record_run(self, seconds: float) -> bool:
        """A run time measured by a worker of a prefetching host; True if ``depth``
        changed (then the host table must re-index the host)."""
        if not self.prefetches:
            return False
        estimate = self.run_estimate
        estimate = seconds if estimate is None else estimate + _EWMA * (seconds - estimate)
        self.run_estimate = estimate
        depth = max(1, min(_MAX_DEPTH, int(_PREFETCH_WINDOW / (estimate + _PER_CALL))))
        if depth == self.depth:
            return False
        self.depth = depth
        self._unused_queue_ids = self.slots * (_MAX_DEPTH - depth)
        return True

    def record_duration(self, seconds: float) -> None:
        self.durations.append(seconds)
        self.done += 1
        if self.estimate is None:
            self.estimate = seconds
        else:
            self.estimate += _EWMA * (seconds - self.estimate)

    def record_durations(self, durations: list[float]) -> None:
        """``record_duration`` for many (the direct lane's calls, booked in batches)."""
        if not durations:
            return
        self.durations.extend(durations)
        self.done += len(durations)
        estimate = self.estimate
        for seconds in durations:
            estimate = seconds if estimate is None else estimate + _EWMA * (seconds - estimate)
        self.estimate = estimate

    def percentiles(self) -> tuple[float | None, float | None]:
        """p50 and p95 of the recent durations, recomputed only after new ones."""
        done, p50, p95 = self._percentiles
        if done != self.done:
            ordered = sorted(self.durations)
            p50, p95 = percentile(ordered, 50), percentile(ordered, 95)
            self._percentiles = (self.done, p50, p95)
        return p50, p95

    def record_censored(self, seconds: float) -> None:
        """An attempt here was cancelled after *seconds* (it lost a race): the host takes
        at least that long, which raises the estimate but never lowers it."""
        if self.estimate is None or seconds > self.estimate:
            self.estimate = seconds

    def speed_estimate(self, now: float) -> float | None:
        """Expected seconds per attempt: the EWMA of finished attempts, raised to the
        longest elapsed time of a running one (a host that has finished nothing for a
        long while is at least that slow)."""
        running = self.running  # in start order: the first is the oldest
        longest = now - next(iter(running.values())).start if running else 0.0
        if self.estimate is None:
            return longest if longest > 0 else None
        return max(self.estimate, longest) if longest > 3 * self.estimate else self.estimate

    def __repr__(self) -> str:
        return f"<host {self.name}: {self.state.value}, {len(self.running)}/{self.slots}>"
