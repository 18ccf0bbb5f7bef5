"""When to back up a running call, and when a slow host should get no more work.

Pure functions of the scheduler's estimates, unit-tested without a scheduler. The ideas
are those of LATE (Zaharia et al., OSDI 2008) and Spark's speculation, adapted to what a
controller can see without progress reports from the task:

- *Estimated time left* of an attempt: its host's typical attempt duration minus the
  time it has run. An attempt that has run for more than three times that typical
  duration is straggling for reasons of its own: it is guessed to need as long again.
  An attempt on a SUSPECT host (silent, perhaps cut off) may never finish.
- *Back up* the attempt with the most time left on the fastest idle slot, when the copy
  is expected to finish ``gain`` times sooner than the original, within a budget of
  extra attempts (a fraction of the calls submitted).
- *Slow hosts*: a host much slower than the fastest (``slow_factor``) only takes a queued
  call if it would finish it before the faster hosts could drain the whole queue;
  otherwise the call waits a moment for a fast slot. Without this, the last calls of a
  job land on the slow host and set the makespan.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MIN_SAVING",
    "SpeculationConfig",
    "feeds_slow_host",
    "pool_estimate",
    "remaining_time",
    "worth_backup",
]

MIN_SAVING = 0.01  # seconds a backup must be expected to save


@dataclass(frozen=True)
class SpeculationConfig:
    enabled: bool = True
    max_backups_per_bundle: int = 2
    budget: float = 0.1  # backup attempts allowed per call submitted ...
    min_budget: int = 2  # ... but never fewer than this, so small jobs can be rescued
    slow_factor: float = 2.0
    gain: float = 1.5
    straggle_factor: float = 3.0

    def __post_init__(self) -> None:
        if self.max_backups_per_bundle < 0:
            raise ValueError("max_backups_per_bundle must be >= 0")
        if not 0 <= self.budget <= 10:
            raise ValueError(f"backup budget must be between 0 and 10, got {self.budget!r}")

    def allowance(self, submitted: int) -> int:
        """How many speculative attempts may have started after *submitted* calls."""
        return max(self.min_budget, math.floor(self.budget * submitted))


def pool_estimate(estimates: Iterable[float | None]) -> float | None:
    """The median of the hosts' known estimates (a typical attempt duration)."""
    known = sorted(e for e in estimates if e is not None)
    if not known:
        return None
    mid = len(known) // 2
    return known[mid] if len(known) % 2 else (known[mid - 1] + known[mid]) / 2


def remaining_time(
    elapsed: float,
    host_estimate: float | None,
    pool_est: float | None,
    *,
    suspect: bool = False,
    straggle_factor: float = 3.0,
) -> float:
    """Estimated seconds until an attempt that has run *elapsed* seconds finishes."""
    if suspect:
        return math.inf
    typical = host_estimate if host_estimate is not None else pool_est
    if typical is None:
        return 0.0
    if elapsed > straggle_factor * typical:
        return elapsed
    return max(typical - elapsed, 0.0)


def worth_backup(remaining: float, backup_estimate: float | None, gain: float) -> bool:
    """Whether a copy expected to take *backup_estimate* beats *remaining* by *gain*, and by
    at least ``MIN_SAVING`` seconds (a copy costs a slot and a transfer)."""
    if backup_estimate is None:
        return math.isinf(remaining)
    return remaining > gain * backup_estimate and remaining - backup_estimate > MIN_SAVING


def feeds_slow_host(
    host_estimate: float | None,
    fastest: float | None,
    fast_rate: float,
    pending: int,
    slow_factor: float,
) -> bool:
    """Whether a host expected to take *host_estimate* per call should take a queued one.

    *fast_rate*: calls per second the hosts that are not slow complete together;
    *pending*: calls queued. A host within *slow_factor* of the fastest always does."""
    if host_estimate is None or fastest is None or host_estimate <= slow_factor * fastest:
        return True
    if fast_rate <= 0:
        return True
    return host_estimate <= pending / fast_rate
