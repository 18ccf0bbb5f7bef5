"""A bounded record of finished attempts, for ``stats()`` and the timeline.

The scheduler used to keep a dict per attempt for the life of the executor (40,000
records and ~64 MB after 20,000 calls). This keeps the last ``limit`` attempts in
preallocated columns (numbers in ``array``s, names as references to the hosts' own
strings), written round-robin: recording an attempt allocates nothing, so a long run
neither grows memory nor leaves small objects scattered through the heap, which would
keep the memory of the run's freed futures from going back to the system.
"""

from __future__ import annotations

from array import array
from typing import Any

from parallelize.ext import AttemptRow

__all__ = ["AttemptLog", "FloatRing", "RateWindow"]

_BY_USER = "cancelled by the user"
_FIELDS = ("bundle", "attempt", "host", "slot", "start", "end", "outcome", "is_backup", "reason")


class AttemptLog:
    def __init__(self, limit: int = 10_000) -> None:
        if limit < 0:
            raise ValueError("the attempt log limit must be >= 0")
        self._limit = limit
        self._ids = array("q", bytes(16 * limit))  # bundle, attempt
        self._times = array("d", bytes(16 * limit))  # start, end
        self._slots = array("i", bytes(4 * limit))
        self._backup = array("b", bytes(limit))
        self._names: list[Any] = [None] * (3 * limit)  # host, outcome, reason
        self._next = 0
        self.total = 0
        self.by_outcome: dict[str, int] = {}

    def add(
        self,
        bundle: int,
        attempt: int,
        host: str,
        slot: int,
        start: float,
        end: float,
        outcome: str,
        is_backup: bool,
        reason: str,
    ) -> None:
        self.total += 1
        self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1
        if not self._limit:
            return
        i = self._next
        self._next = (i + 1) % self._limit
        self._ids[2 * i] = bundle
        self._ids[2 * i + 1] = attempt
        self._times[2 * i] = start
        self._times[2 * i + 1] = end
        self._slots[i] = slot
        self._backup[i] = is_backup
        self._names[3 * i : 3 * i + 3] = (host, outcome, reason)

    def add_runs(self, host: str, runs: list[tuple[int, int, int, float, float, bool]]) -> None:
        """Many attempts of *host* at once, each (bundle, attempt, slot, start, end, won):
        won, or else cancelled by the user, none a backup (the direct lane's calls, booked
        in batches: one call of this instead of one ``add`` per attempt)."""
        won = sum(1 for run in runs if run[5])
        by_outcome = self.by_outcome
        self.total += len(runs)
        if won:
            by_outcome["won"] = by_outcome.get("won", 0) + won
        if won < len(runs):
            by_outcome["cancelled"] = by_outcome.get("cancelled", 0) + len(runs) - won
        limit = self._limit
        if not limit:
            return
        ids, times, slots, backup, names = (
            self._ids,
            self._times,
            self._slots,
            self._backup,
            self._names,
        )
        i = self._next
        for bundle, attempt, slot, start, end, ok in runs:
            ids[2 * i] = bundle
            ids[2 * i + 1] = attempt
            times[2 * i] = start
            times[2 * i + 1] = end
            slots[i] = slot
            backup[i] = False
            names[3 * i : 3 * i + 3] = (host, "won", "") if ok else (host, "cancelled", _BY_USER)
            i = (i + 1) % limit
        self._next = i

    def __len__(self) -> int:
        return min(self.total, self._limit)

    def rows(self) -> tuple[AttemptRow, ...]:
        """The kept attempts, oldest first."""
        count = len(self)
        first = (self._next - count) % self._limit if self._limit else 0
        out = []
        for k in range(count):
            i = (first + k) % self._limit
            out.append(
                AttemptRow(
                    bundle=self._ids[2 * i],
                    attempt=self._ids[2 * i + 1],
                    host=self._names[3 * i],
                    slot=str(self._slots[i]),
                    start=self._times[2 * i],
                    end=self._times[2 * i + 1],
                    outcome=self._names[3 * i + 1],
                    is_backup=bool(self._backup[i]),
                    reason=self._names[3 * i + 2],
                )
            )
        return tuple(out)

    def records(self) -> list[dict[str, Any]]:
        """The kept attempts as dicts (the ``stats().extra["attempts"]`` format: the slot
        is its number on the host)."""
        return [
            {**dict(zip(_FIELDS, _values(row), strict=True)), "slot": int(row.slot)}
            for row in self.rows()
        ]


class FloatRing:
    """The last *size* floats, in a preallocated array (no object per value)."""

    def __init__(self, size: int) -> None:
        self._data = array("d", bytes(8 * size))
        self._size = size
        self._count = 0

    def append(self, value: float) -> None:
        self._data[self._count % self._size] = value
        self._count += 1

    def extend(self, values: list[float]) -> None:
        data, size, count = self._data, self._size, self._count
        for value in values:
            data[count % size] = value
            count += 1
        self._count = count

    def values(self) -> list[float]:
        return list(self._data[: min(self._count, self._size)])


class RateWindow:
    """Completions per second over the last *window* seconds, counted in one-second buckets
    (a float per completion, kept for the whole window, would litter the heap)."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._buckets: dict[int, int] = {}

    def add(self, now: float, count: int = 1) -> None:
        second = int(now)
        self._buckets[second] = self._buckets.get(second, 0) + count

    def rate(self, now: float) -> float | None:
        """Completions per second, None with fewer than two or less than a second of data."""
        horizon = int(now - self._window)
        for second in [s for s in self._buckets if s < horizon]:
            del self._buckets[second]
        if not self._buckets:
            return None
        total = sum(self._buckets.values())
        span = now - min(self._buckets)
        if total < 2 or span < 1.0:
            return None
        return total / span


def _values(row: AttemptRow) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in _FIELDS)
