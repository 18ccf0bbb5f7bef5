"""The scheduler's index of its hosts: who is up, who has a free slot, who is due a retry.

Owned by the scheduler thread. Every host state change and every slot taken or released
goes through this table, which keeps the indexes the scheduler needs per call in O(1)
or O(log n), so that a pool of thousands of hosts costs about what a pool of two does:

- ``free``: UP hosts with a free slot, in a list with O(1) removal (swap with the last);
- ``up_count`` and the hosts never connected (``take_idle``);
- a heap of DOWN/BROKEN hosts by the time of their next connection attempt;
- cached pool-wide speed figures (fastest host, the rate of the hosts that are not slow,
  the median duration), refreshed at most every ``_REFRESH`` seconds of the clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from ._hosts import Host, HostState
from ._speculation import MIN_SAVING, pool_estimate

__all__ = ["HostTable"]

_REFRESH = 0.05
# HostState.connected as a set: the speed refresh asks it of every host (a property call
# each, at a thousand hosts every 50 ms).
_CONNECTED = frozenset({HostState.UP, HostState.SUSPECT})


class HostTable:
    def __init__(self, hosts: Sequence[Host]) -> None:
        self.hosts = list(hosts)
        self.free: list[Host] = []
        self._free_pos: dict[int, int] = {}  # host index -> position in self.free
        self.up_count = 0
        self._idle = list(self.hosts)
        self._retries: list[tuple[float, int, int]] = []  # (retry_at, gen, host index)
        self._speeds_at = float("-inf")
        self.fastest: float | None = None
        self.fast_rate = 0.0
        self.spread = False  # some host is slower than slow_factor x the fastest
        self.slow: list[Host] = []  # with spread: hosts that were that slow at the refresh
        self.median: float | None = None

    # -- states and slots -------------------------------------------------------------

    def move(self, host: Host, new: HostState) -> None:
        """The one way a host changes state (the Host checks the transition)."""
        old = host.state
        host.transition(new)
        host.changes += 1
        if old is HostState.UP:
            self.up_count -= 1
        if new is HostState.UP:
            self.up_count += 1
        if new in (HostState.DOWN, HostState.BROKEN):
            heapq.heappush(self._retries, (host.retry_at, host.gen, host.index))
        self._index_free(host)

    def take_slot(self, host: Host) -> int:
        slot = host.take_slot()
        host.changes += 1
        self._index_free(host)
        return slot

    def release_slot(self, host: Host, slot: int) -> None:
        host.release_slot(slot)
        host.changes += 1
        self._index_free(host)

    def reindex(self, host: Host) -> None:
        """After a change of *host*'s capacity (its prefetch depth)."""
        host.changes += 1
        self._index_free(host)

    def _index_free(self, host: Host) -> None:
        listed = host.index in self._free_pos
        if host.free_slots > 0:
            if not listed:
                self._free_pos[host.index] = len(self.free)
                self.free.append(host)
        elif listed:
            pos = self._free_pos.pop(host.index)
            last = self.free.pop()
            if last is not host:
                self.free[pos] = last
                self._free_pos[last.index] = pos

    def take_idle(self) -> list[Host]:
        """Hosts never connected yet (each returned once)."""
        if not self._idle:  # (asked on every submit)
            return []
        idle, self._idle = self._idle, []
        return [h for h in idle if h.state is HostState.IDLE]

    # -- retries ----------------------------------------------------------------------------

    def next_retry(self) -> float | None:
        self._drop_stale_retries()
        return self._retries[0][0] if self._retries else None

    def due_retries(self, now: float) -> list[Host]:
        """DOWN or BROKEN hosts whose backoff has elapsed (removed from the heap)."""
        due = []
        self._drop_stale_retries()
        while self._retries and self._retries[0][0] <= now:
            _, gen, index = heapq.heappop(self._retries)
            host = self.hosts[index]
            if host.gen == gen and host.state in (HostState.DOWN, HostState.BROKEN):
                due.append(host)
            self._drop_stale_retries()
        return due

    def _drop_stale_retries(self) -> None:
        retries = self._retries
        while retries:
            _, gen, index = retries[0]
            host = self.hosts[index]
            if host.gen == gen and host.state in (HostState.DOWN, HostState.BROKEN):
                return
            heapq.heappop(retries)

    # -- speeds -----------------------------------------------------------------------------

    def refresh_speeds(self, now: float, slow_factor: float, *, force: bool = False) -> None:
        """Recompute the cached pool-wide speed figures (at most every ``_REFRESH`` s)."""
        if not force and now - self._speeds_at < _REFRESH:
            return
        self._speeds_at = now
        estimates = [h.estimate for h in self.hosts if h.state in _CONNECTED]
        known = [e for e in estimates if e is not None and e > 0]
        self.median = pool_estimate(h.estimate for h in self.hosts)
        if not known:
            self.fastest, self.fast_rate, self.spread = None, 0.0, False
            self.slow = []
            return
        fastest = min(known)
        self.fastest = fastest
        slowest = max(known)
        # Hosts that differ by less than a backup must save (calls of microseconds, where
        # the scheduler's own latency is most of what it measures) are not told apart.
        self.spread = slowest > slow_factor * fastest and slowest - fastest > MIN_SAVING
        self.fast_rate = sum(
            h.slots / h.estimate
            for h in self.hosts
            if h.state in _CONNECTED
            and h.estimate is not None
            and 0 < h.estimate <= slow_factor * fastest
        )
        # Dispatch looks only at these (not at every free host per pass): the estimate of a
        # host whose running attempt ages past the bound is seen at the next refresh.
        bound = slow_factor * fastest
        self.slow = (
            [
                h
                for h in self.hosts
                if h.state in _CONNECTED
                and (est := h.speed_estimate(now)) is not None
                and est > bound
            ]
            if self.spread
            else []
        )
