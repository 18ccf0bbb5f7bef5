"""A bounded record of finished attempts, for ``stats()`` and the timeline.

The scheduler used to keep a dict per attempt for the life of the executor (40,000
records and ~64 MB after 20,000 calls). This keeps the last ``limit`` attempts as
tuples and running totals for everything else, so memory stays flat on long runs.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["AttemptLog"]

_FIELDS = ("bundle", "attempt", "host", "slot", "start", "end", "outcome", "is_backup", "reason")


class AttemptLog:
    def __init__(self, limit: int = 10_000) -> None:
        if limit < 0:
            raise ValueError("the attempt log limit must be >= 0")
        self._ring: deque[tuple[Any, ...]] = deque(maxlen=limit)
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
        self._ring.append((bundle, attempt, host, slot, start, end, outcome, is_backup, reason))

    def __len__(self) -> int:
        return len(self._ring)

    def records(self) -> list[dict[str, Any]]:
        """The kept attempts, oldest first, as dicts (the ``stats().extra`` format)."""
        return [dict(zip(_FIELDS, row, strict=True)) for row in self._ring]
