"""Task counters and duration statistics shared by every executor.

Recording must be cheap (it sits on the per-task hot path), so `TaskStats`
only appends to an ``array('d')`` under a lock; numpy is imported lazily when
a snapshot is taken with :meth:`TaskStats.snapshot`.
"""

from __future__ import annotations

import enum
import html
import os
import random
import threading
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._records import AttemptRow, HostRow

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from matplotlib.axes import Axes

__all__ = ["ExecutorStats", "Outcome", "TaskStats"]

# Past this many samples the durations become a uniform reservoir sample, so
# a long-lived executor keeps bounded memory (8 MB) and unbiased percentiles.
_MAX_SAMPLES = 1_000_000
_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


class Outcome(enum.Enum):
    """How a task ended."""

    # Members are singletons compared by identity: hash them as such (Enum hashes the
    # name in Python code; these are dict keys on the hot paths of every call).
    __hash__ = object.__hash__

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskStats:
    """Thread-safe counters and a duration sample for one executor."""

    __slots__ = (
        "_cancelled",
        "_durations",
        "_failed",
        "_lock",
        "_seen",
        "_submit_lock",
        "_submitted",
        "_succeeded",
    )

    def __init__(self) -> None:
        # Two locks so that submitting threads and finishing workers never contend
        # with each other: a lock passed between them costs a GIL hand-off per task.
        self._submit_lock = threading.Lock()
        self._lock = threading.Lock()
        self._submitted = 0
        self._succeeded = 0
        self._failed = 0
        self._cancelled = 0
        self._seen = 0
        self._durations = array("d")

    def task_submitted(self, count: int = 1) -> None:
        with self._submit_lock:
            self._submitted += count

    def task_finished(self, outcome: Outcome, duration: float | None = None) -> None:
        """Record the end of a task; *duration* (seconds) is None for tasks that never ran."""
        with self._lock:
            if outcome is Outcome.SUCCEEDED:
                self._succeeded += 1
            elif outcome is Outcome.FAILED:
                self._failed += 1
            else:
                self._cancelled += 1
            if duration is None:
                return
            self._seen += 1
            if len(self._durations) < _MAX_SAMPLES:
                self._durations.append(duration)
            else:
                slot = random.randrange(self._seen)
                if slot < _MAX_SAMPLES:
                    self._durations[slot] = duration

    @property
    def submitted(self) -> int:
        """Tasks submitted so far (an int read: no lock needed)."""
        return self._submitted

    @property
    def live(self) -> int:
        """Tasks submitted and not yet finished (queued or running)."""
        with self._lock:
            return self._submitted - self._succeeded - self._failed - self._cancelled

    def snapshot(
        self,
        name: str,
        *,
        attempt_rows: tuple[AttemptRow, ...] = (),
        host_rows: tuple[HostRow, ...] = (),
        **extra: Any,
    ) -> ExecutorStats:
        """The counters now; *attempt_rows*/*host_rows* are the executor's typed rows,
        *extra* its other figures (and, for older readers, the same rows as dicts under
        ``extra["attempts"]``/``extra["hosts"]``)."""
        import numpy as np

        with self._lock:
            durations = np.frombuffer(self._durations, dtype=np.float64).copy()
            return ExecutorStats(
                name=name,
                submitted=self._submitted,
                succeeded=self._succeeded,
                failed=self._failed,
                cancelled=self._cancelled,
                durations=durations,
                extra=extra,
                attempts=tuple(attempt_rows),
                hosts=tuple(host_rows),
            )


@dataclass(frozen=True)
class ExecutorStats:
    """A point-in-time snapshot of an executor's work.

    ``durations`` holds the run time in seconds of finished tasks (a uniform
    sample once more than a million tasks have run). Percentiles and the
    histogram are computed from it with numpy.
    """

    name: str
    submitted: int
    succeeded: int
    failed: int
    cancelled: int
    durations: npt.NDArray[np.float64] = field(repr=False)
    extra: dict[str, Any] = field(default_factory=dict)
    #: One row per recorded attempt (executors that track attempts: REMOTE, DASK, RAY).
    attempts: tuple[AttemptRow, ...] = field(default=(), repr=False)
    #: One row per host or cluster worker (same executors).
    hosts: tuple[HostRow, ...] = field(default=(), repr=False)

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def live(self) -> int:
        """Tasks submitted and not finished: queued or running."""
        return self.submitted - self.finished

    def percentiles(self, qs: tuple[float, ...] = _PERCENTILES) -> dict[float, float]:
        """Duration percentiles in seconds, ``{50.0: p50, ...}``; empty when nothing ran."""
        import numpy as np

        if self.durations.size == 0:
            return {}
        values = np.percentile(self.durations, qs)
        return {q: float(v) for q, v in zip(qs, values, strict=False)}

    def histogram(self, bins: int = 20) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """``(counts, edges)`` of durations on log-spaced bins (durations span decades)."""
        import numpy as np

        if self.durations.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        low = max(float(self.durations.min()), 1e-7)
        high = max(float(self.durations.max()), low * 1.0001)
        edges = np.geomspace(low, high, bins + 1)
        counts, edges = np.histogram(np.clip(self.durations, low, high), bins=edges)
        return counts.astype(np.int64), edges

    def format(self, width: int = 40) -> str:
        """A human-readable summary table with a text histogram."""
        lines = [
            f"{self.name}: {self.submitted} submitted, {self.succeeded} succeeded, "
            f"{self.failed} failed, {self.cancelled} cancelled, {self.live} live"
        ]
        pct = self.percentiles()
        if pct:
            mean = float(self.durations.mean())
            parts = ", ".join(f"p{q:g} {_human_seconds(v)}" for q, v in pct.items())
            lines.append(
                f"  duration: mean {_human_seconds(mean)}, {parts}, "
                f"max {_human_seconds(float(self.durations.max()))}"
            )
            counts, edges = self.histogram(bins=10)
            peak = int(counts.max()) or 1
            for count, lo, hi in zip(counts, edges[:-1], edges[1:], strict=False):
                bar = "#" * round(width * int(count) / peak)
                lines.append(
                    f"  {_human_seconds(float(lo)):>9} - {_human_seconds(float(hi)):>9} "
                    f"{int(count):>8} {bar}"
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    # -- notebooks and pictures ----------------------------------------------

    def _repr_html_(self) -> str:
        """HTML tables for Jupyter: counts, durations, and per-host rows from ``extra["hosts"]``."""
        return _stats_html(self)

    def plot_histogram(self, ax: Axes | None = None, *, bins: int = 30) -> Axes:
        """Plot task durations on log-spaced bins (p50/p90/p99 marked); return the Axes.

        Needs matplotlib (``pip install 'parallelize[plot]'``); a new figure is
        made when *ax* is None. Raises ValueError when no task has finished.
        """
        from ._plot import plot_histogram

        return plot_histogram(self, ax, bins=bins)

    def plot_timeline(self, ax: Axes | None = None) -> Axes:
        """Plot one row per worker slot and one bar per attempt; return the Axes.

        Drawn from ``extra["attempts"]`` (executors that track attempts, such as
        REMOTE, record them): colour by outcome, backups hatched, failed and lost
        attempts marked with a red x, a dashed arrow from a straggler to its
        backup, bundle ids on backed-up and unusually long bars. Needs matplotlib
        (``pip install 'parallelize[plot]'``). Raises ValueError when the
        executor records no attempts.
        """
        from ._plot import plot_timeline

        return plot_timeline(self, ax)

    def save_timeline(self, path: str | os.PathLike[str], **savefig: Any) -> Path:
        """Render :meth:`plot_timeline` to an image file (PNG, SVG, PDF: by suffix).

        Does not use pyplot, so it works in scripts and on machines without a
        display; *savefig* keyword arguments go to ``Figure.savefig``.
        """
        from ._plot import save_timeline

        return save_timeline(self, path, **savefig)


def _human_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def _html_cell(value: Any) -> str:
    if value is None:
        text = ""
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return html.escape(text)


def _html_table(headers: list[str], rows: list[list[Any]], caption: str | None = None) -> str:
    parts = ['<table style="border-collapse:collapse;margin:0.3em 0">']
    if caption is not None:
        parts.append(
            f'<caption style="text-align:left;font-weight:bold">{html.escape(caption)}</caption>'
        )
    parts.append("<thead><tr>")
    parts.extend(f'<th style="text-align:right">{html.escape(h)}</th>' for h in headers)
    parts.append("</tr></thead><tbody>")
    for row in rows:
        parts.append("<tr>")
        parts.extend(f'<td style="text-align:right">{_html_cell(v)}</td>' for v in row)
        parts.append("</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _stats_html(stats: ExecutorStats) -> str:
    tables = [
        _html_table(
            ["submitted", "succeeded", "failed", "cancelled", "live"],
            [[stats.submitted, stats.succeeded, stats.failed, stats.cancelled, stats.live]],
            caption=stats.name,
        )
    ]
    pct = stats.percentiles()
    if pct:
        headers = ["mean"] + [f"p{q:g}" for q in pct] + ["max"]
        values = [float(stats.durations.mean()), *pct.values(), float(stats.durations.max())]
        tables.append(
            _html_table(headers, [[_human_seconds(v) for v in values]], caption="task duration")
        )
    else:
        tables.append("<p><em>no finished tasks yet</em></p>")
    scalars = [
        [key, value]
        for key, value in stats.extra.items()
        if isinstance(value, (str, int, float, bool)) or value is None
    ]
    if scalars:
        tables.append(_html_table(["", "value"], scalars))
    hosts: list[dict[str, Any]] = [row.as_dict() for row in stats.hosts]
    if not hosts:  # an executor that gives no typed rows: its extra["hosts"], if any
        raw = stats.extra.get("hosts")
        if isinstance(raw, dict):  # keyed by host name
            raw = [{"name": name, **row} for name, row in raw.items() if isinstance(row, dict)]
        if isinstance(raw, list) and all(isinstance(h, dict) for h in raw):
            hosts = raw
    if hosts:
        columns: list[Any] = []
        for host in hosts:
            columns.extend(k for k in host if k not in columns)
        rows = [[host.get(c) for c in columns] for host in hosts]
        tables.append(_html_table([str(c) for c in columns], rows, caption="hosts"))
    return '<div class="parallelize-stats">' + "".join(tables) + "</div>"
