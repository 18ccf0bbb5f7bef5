"""Which straggling call gets a speculative backup (pure logic, shared by the cluster engines).

The rules are REMOTE's: nothing is backed up while calls are still waiting for a
worker; a call is a straggler once it has run longer than the typical (median)
call; the longer it runs past the median and the 95th percentile the more it
deserves a copy, and each copy it already has divides its claim; a call gets at
most ``max_backups`` copies, on a worker it is not running on, one backup per
heartbeat; and all copies together stay within REMOTE's budget of extra work:
``max(2, 10% of the calls submitted)`` (``backup_allowance``). That keeps the extra
work to the idle tail of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Running", "backup_allowance", "choose_backup", "percentile"]

# REMOTE's defaults (``remote._speculation.SpeculationConfig``: budget, min_budget); not
# imported from there: parallelize does not depend on remote.
BACKUP_BUDGET = 0.1  # backup copies allowed per call submitted ...
MIN_BACKUP_BUDGET = 2  # ... but never fewer, so that small jobs can be rescued


def backup_allowance(submitted: int) -> int:
    """How many backup copies may have started after *submitted* calls."""
    return max(MIN_BACKUP_BUDGET, math.floor(BACKUP_BUDGET * submitted))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The *q*-th percentile (0-100, linear interpolation); None if empty."""
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


@dataclass(frozen=True)
class Running:
    """A call in flight: how long its oldest copy has run and where its copies run."""

    call_id: int
    elapsed: float
    workers: frozenset[str]
    backups: int


def _score(elapsed: float, p50: float, p95: float, backups: int) -> float:
    if elapsed <= p50:
        return 0.0
    score = elapsed * (2.0 if elapsed > p95 else 1.0)
    return score / (1 + backups)


def choose_backup(
    running: Iterable[Running],
    durations: Sequence[float],
    idle_workers: Sequence[str],
    *,
    pending: int,
    max_backups: int,
    started: int,
    submitted: int,
    min_finished: int = 2,
) -> tuple[int, str] | None:
    """``(call_id, worker)`` for the one backup to start now, or None. *started*: backup
    copies started so far, of *submitted* calls (the budget, ``backup_allowance``)."""
    if pending or max_backups <= 0 or not idle_workers or len(durations) < min_finished:
        return None
    if started >= backup_allowance(submitted):
        return None
    p50 = percentile(durations, 50)
    p95 = percentile(durations, 95)
    assert p50 is not None and p95 is not None
    best: tuple[float, int, str] | None = None
    for call in running:
        if call.backups >= max_backups:
            continue
        target = next((w for w in idle_workers if w not in call.workers), None)
        if target is None:
            continue
        score = _score(call.elapsed, p50, p95, call.backups)
        if score > 0 and (best is None or score > best[0]):
            best = (score, call.call_id, target)
    return None if best is None else (best[1], best[2])
