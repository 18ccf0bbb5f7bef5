"""Typed rows of :class:`~parallelize.ExecutorStats`: one per attempt, one per host.

Executors that track where calls ran (REMOTE, DASK, RAY) hand these to
``TaskStats.snapshot``; ``ExecutorStats.attempts`` and ``ExecutorStats.hosts``
carry them, and the timeline plot and the notebook tables read them. The same
data is mirrored as plain dicts in ``stats().extra["attempts"]`` /
``extra["hosts"]`` for code written against earlier versions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AttemptRow", "HostRow"]


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One attempt of a call: where it ran, when, and how it ended.

    ``start``/``end`` are seconds on one clock (for REMOTE, since the executor
    started); ``end`` is None while it runs. ``outcome`` is ``won``, ``failed``,
    ``lost``, ``cancelled``, ``timed out`` or ``running``.
    """

    bundle: int
    attempt: int
    host: str
    slot: str
    start: float
    end: float | None
    outcome: str
    is_backup: bool = False
    reason: str | None = None

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_mapping(cls, item: Mapping[str, Any]) -> AttemptRow:
        """A row from the dict form (``extra["attempts"]`` of executors that predate rows)."""
        end = item.get("end")
        reason = item.get("reason")
        return cls(
            bundle=int(item.get("bundle", 0) or 0),
            attempt=int(item.get("attempt", 0) or 0),
            host=str(item.get("host", "")),
            slot=str(item["slot"]),
            start=float(item["start"]),
            end=None if end is None else float(end),
            outcome=str(item["outcome"]),
            is_backup=bool(item.get("is_backup", False)),
            reason=None if reason is None else str(reason),
        )


@dataclass(frozen=True, slots=True)
class HostRow:
    """One host (REMOTE) or cluster worker (DASK, RAY) and what ran there.

    Fields an executor does not know are None (Dask knows no slot states, say).
    ``p50``/``p95`` are call durations in seconds.
    """

    name: str
    state: str | None = None
    slots: int | None = None
    in_flight: int | None = None
    done: int | None = None
    failed: int | None = None
    lost: int | None = None
    p50: float | None = None
    p95: float | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }
