"""What the scheduler's heartbeat computes: the status table and backup choice.

Every ``heartbeat_interval`` seconds the scheduler thread builds a
:class:`PoolStatus` (also returned, as plain dicts, in ``stats().extra``),
logs it at INFO on the ``remote`` logger and may start one backup: the
in-flight bundle with the highest :func:`backup_score`. The functions here are
pure so they can be unit-tested without a scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BackupCandidate",
    "HostStatus",
    "PoolStatus",
    "backup_score",
    "format_status",
    "format_summary",
    "percentile",
    "pick_backup",
    "summary_line",
]


def percentile(values: Iterable[float], q: float) -> float | None:
    """The *q*-th percentile (0-100, linear interpolation) of *values*; None if empty."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def backup_score(
    elapsed: float,
    host_p95: float | None,
    global_p50: float | None,
    global_p95: float | None,
    backups: int,
) -> float:
    """How much an in-flight bundle deserves a backup (0: not at all).

    The base is how long it has been running. A bundle running for less than
    the typical (global p50) duration is not a straggler yet and scores 0.
    Running longer than its host's p95 (or on a host that has not finished
    anything yet) doubles the score, longer than the global p95 doubles it
    again, and each backup it already has divides it.
    """
    if elapsed <= 0 or global_p50 is None or elapsed <= global_p50:
        return 0.0
    score = elapsed
    if host_p95 is None or elapsed > host_p95:
        score *= 2.0
    if global_p95 is None or elapsed > global_p95:
        score *= 2.0
    return score / (1 + backups)


@dataclass(frozen=True)
class BackupCandidate:
    bundle_id: int
    elapsed: float
    host_p95: float | None
    backups: int


def pick_backup(
    candidates: Iterable[BackupCandidate],
    global_p50: float | None,
    global_p95: float | None,
) -> BackupCandidate | None:
    """The candidate with the highest positive score (ties: the lower bundle id)."""
    best: BackupCandidate | None = None
    best_score = 0.0
    for cand in candidates:
        score = backup_score(cand.elapsed, cand.host_p95, global_p50, global_p95, cand.backups)
        if score > best_score or (
            score == best_score
            and score > 0
            and best is not None
            and cand.bundle_id < best.bundle_id
        ):
            best, best_score = cand, score
    return best


@dataclass(frozen=True)
class HostStatus:
    name: str
    state: str
    slots: int
    in_flight: int
    done: int
    lost: int
    p50: float | None
    p95: float | None
    reason: str = ""
    in_flight_bundles: tuple[int, ...] = ()


@dataclass(frozen=True)
class PoolStatus:
    done: int
    in_flight: int
    pending: int
    succeeded: int
    failed: int
    poisoned: int
    cancelled: int
    backups_started: int
    backups_won: int
    p50: float | None
    p95: float | None
    eta: float | None  # seconds until in-flight + pending work is done at the recent rate
    hosts: tuple[HostStatus, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hosts"] = {h.name: asdict(h) for h in self.hosts}
        return data


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    return f"{seconds / 60:.1f}min"


def format_status(name: str, status: PoolStatus) -> str:
    """A small text table: one summary line, then one line per host."""
    lines = [
        f"{name}: {status.done} done, {status.in_flight} in flight, {status.pending} pending"
        f" | p50 {_fmt(status.p50)} p95 {_fmt(status.p95)} | ETA {_fmt(status.eta)}"
        f" | backups {status.backups_started} started, {status.backups_won} won"
        + (f" | {status.poisoned} poisoned" if status.poisoned else "")
    ]
    rows: Sequence[HostStatus] = status.hosts
    width = max([len(h.name) for h in rows] + [4])
    lines.append(
        f"  {'host':<{width}}  {'state':<10} {'in flight':>9} {'done':>7} {'lost':>5}"
        f" {'p50':>8} {'p95':>8}  bundles"
    )
    for h in rows:
        bundles = ",".join(str(b) for b in h.in_flight_bundles[:6])
        if len(h.in_flight_bundles) > 6:
            bundles += ",..."
        extra = f"  ({h.reason})" if h.reason and h.state != "up" else ""
        lines.append(
            f"  {h.name:<{width}}  {h.state:<10} {f'{h.in_flight}/{h.slots}':>9} {h.done:>7}"
            f" {h.lost:>5} {_fmt(h.p50):>8} {_fmt(h.p95):>8}  {bundles or '-'}{extra}"
        )
    return "\n".join(lines)


def _short(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def format_summary(name: str, status: PoolStatus) -> str:
    """One line for a progress bar, e.g.
    ``remote: 3/3 hosts up, 12 in flight, 40 pending, p50 0.8s, ETA 35s``."""
    return summary_line(
        name,
        up=sum(1 for h in status.hosts if h.state == "up"),
        suspect=sum(1 for h in status.hosts if h.state == "suspect"),
        hosts=len(status.hosts),
        in_flight=status.in_flight,
        pending=status.pending,
        p50=status.p50,
        eta=status.eta,
        poisoned=status.poisoned,
    )


def summary_line(
    name: str,
    *,
    up: int,
    suspect: int,
    hosts: int,
    in_flight: int,
    pending: int,
    p50: float | None,
    eta: float | None,
    poisoned: int,
) -> str:
    """:func:`format_summary` from the figures themselves (the scheduler publishes it every
    0.2 s without building a whole :class:`PoolStatus`, whose per-host rows cost
    milliseconds at a thousand hosts)."""
    parts = [
        f"{up}/{hosts} hosts up" + (f" ({suspect} not answering)" if suspect else ""),
        f"{in_flight} in flight",
        f"{pending} pending",
    ]
    if p50 is not None:
        parts.append(f"p50 {_short(p50)}")
    if eta is not None:
        parts.append(f"ETA {_short(eta)}")
    if poisoned:
        parts.append(f"{poisoned} poisoned")
    return f"{name}: " + ", ".join(parts)
