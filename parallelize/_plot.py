"""Pictures of an :class:`~parallelize.ExecutorStats`: a duration histogram and an attempt timeline.

matplotlib is optional (``pip install 'parallelize[plot]'``) and imported only
when a plot is asked for.

The timeline is drawn from ``stats.attempts`` (typed :class:`AttemptRow` rows, which
REMOTE, DASK and RAY record); for an executor that gives none, from
``stats.extra["attempts"]``, one dict per attempt::

    {"slot": "host1/0", "start": 12.5, "end": 14.0, "outcome": "won",
     "bundle": 17, "is_backup": False}

``start``/``end`` are seconds on one clock (any origin); ``outcome`` is one of
``won``/``succeeded``, ``failed``, ``lost``, ``cancelled`` (anything else,
e.g. ``running``, is drawn as in progress). ``end`` may be None for an
attempt still running: it is drawn up to the latest time seen.
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._records import AttemptRow

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ._stats import ExecutorStats

__all__ = ["plot_histogram", "plot_timeline", "save_timeline"]

_INSTALL_HINT = "pip install 'parallelize[plot]'"

# outcome -> (legend label, face colour)
_STYLES: dict[str, tuple[str, str]] = {
    "won": ("won / succeeded", "#2ca02c"),
    "failed": ("failed", "#d62728"),
    "lost": ("lost", "#ff7f0e"),
    "cancelled": ("cancelled", "#bdbdbd"),
    "running": ("running / other", "#1f77b4"),
}
_ALIASES = {"succeeded": "won", "success": "won", "ok": "won", "canceled": "cancelled"}
_MARKED = ("failed", "lost")  # outcomes whose end gets a red x
_BAR_HEIGHT = 0.72
_MAX_LABELS = 60  # bundle-id annotations beyond this would be unreadable
_STRAGGLER_FACTOR = 3.0  # an attempt this many times the median duration is labelled


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"plotting needs matplotlib: {_INSTALL_HINT}") from exc


@dataclass(frozen=True)
class _Attempt:
    slot: str
    start: float
    end: float | None
    outcome: str
    bundle: object
    is_backup: bool


def _parse_attempts(stats: ExecutorStats) -> list[_Attempt]:
    rows = stats.attempts or _rows_from_extra(stats)
    attempts = []
    for row in rows:
        outcome = row.outcome.lower()
        outcome = _ALIASES.get(outcome, outcome)
        if outcome not in _STYLES:
            outcome = "running"
        attempts.append(
            _Attempt(
                slot=_slot_label(row.slot, row.host),
                start=row.start,
                end=row.end,
                outcome=outcome,
                bundle=row.bundle,
                is_backup=row.is_backup,
            )
        )
    return attempts


def _rows_from_extra(stats: ExecutorStats) -> list[AttemptRow]:
    """Rows from ``extra["attempts"]`` dicts (executors that give no typed rows)."""
    raw = stats.extra.get("attempts")
    if not raw:
        raise ValueError(
            f"executor {stats.name!r} does not record a timeline: its stats() has no "
            "attempts (only executors that track attempts, such as REMOTE, do)"
        )
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise ValueError(f"stats.extra['attempts'] must be a list of dicts, got {type(raw)}")
    rows = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise ValueError(f"stats.extra['attempts'][{index}] is not a dict: {item!r}")
        missing = [k for k in ("slot", "start", "end", "outcome") if k not in item]
        if missing:
            raise ValueError(f"stats.extra['attempts'][{index}] lacks {', '.join(missing)}")
        rows.append(AttemptRow.from_mapping(item))
    return rows


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort "host2/10" after "host2/9" and "host10/0" after "host9/0"."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]


def _new_axes(figsize: tuple[float, float]) -> Axes:
    """Axes on a pyplot figure (shown inline in notebooks)."""
    import matplotlib.pyplot as plt

    _fig, ax = plt.subplots(figsize=figsize)
    return ax


def _slot_label(slot: str, host: str) -> str:
    # Records may name the slot fully ("host1/0") or give the host apart.
    return f"{host}/{slot}" if host and "/" not in slot else slot


def _timeline_size(slots: int) -> tuple[float, float]:
    return (11.0, min(40.0, max(2.8, 0.32 * slots + 1.6)))


def plot_timeline(stats: ExecutorStats, ax: Axes | None = None) -> Axes:
    """Draw one row per worker slot and one bar per attempt; return the Axes."""
    _require_matplotlib()
    attempts = _parse_attempts(stats)
    slots = sorted({a.slot for a in attempts}, key=_natural_key)
    if ax is None:
        ax = _new_axes(_timeline_size(len(slots)))
    _draw_timeline(ax, stats.name, attempts, slots)
    return ax


def save_timeline(stats: ExecutorStats, path: str | os.PathLike[str], **savefig: Any) -> Path:
    """Render the timeline to an image file (format from the suffix) without pyplot."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    attempts = _parse_attempts(stats)
    slots = sorted({a.slot for a in attempts}, key=_natural_key)
    fig = Figure(figsize=_timeline_size(len(slots)))
    ax = fig.add_subplot()
    _draw_timeline(ax, stats.name, attempts, slots)
    out = Path(os.fspath(path))
    savefig.setdefault("bbox_inches", "tight")
    savefig.setdefault("dpi", 110)
    fig.savefig(out, **savefig)
    return out


def _draw_timeline(ax: Axes, name: str, attempts: list[_Attempt], slots: list[str]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    origin = min(a.start for a in attempts)
    latest = max(max(a.start, a.end if a.end is not None else a.start) for a in attempts)
    row = {slot: i for i, slot in enumerate(slots)}

    def span(a: _Attempt) -> tuple[float, float]:
        end = a.end if a.end is not None else latest
        return a.start - origin, max(end - a.start, 0.0)

    # One barh call per (outcome, backup) style keeps thousands of attempts fast.
    groups: dict[tuple[str, bool], list[_Attempt]] = {}
    for a in attempts:
        groups.setdefault((a.outcome, a.is_backup), []).append(a)
    for (outcome, backup), members in sorted(groups.items()):
        colour = _STYLES[outcome][1]
        spans = [span(a) for a in members]
        ax.barh(
            [row[a.slot] for a in members],
            [w for _, w in spans],
            left=[x for x, _ in spans],
            height=_BAR_HEIGHT,
            color=colour,
            edgecolor="black" if backup else "white",
            linewidth=1.3 if backup else 0.5,
            hatch="///" if backup else None,
            alpha=0.95,
        )

    marked = [a for a in attempts if a.outcome in _MARKED]
    if marked:
        ax.plot(
            [sum(span(a)) for a in marked],
            [row[a.slot] for a in marked],
            linestyle="none",
            marker="x",
            markersize=9,
            markeredgewidth=2.2,
            color="#b00000",
            zorder=4,
        )

    by_bundle: dict[object, list[_Attempt]] = {}
    for a in attempts:
        if a.bundle is not None:
            by_bundle.setdefault(a.bundle, []).append(a)
    labelled: list[_Attempt] = []
    connectors = False
    for members in by_bundle.values():
        backups = [a for a in members if a.is_backup]
        if not backups:
            continue
        originals = sorted((a for a in members if not a.is_backup), key=lambda a: a.start)
        labelled.extend(members)
        if not originals:
            continue
        first = originals[0]
        for b in backups:
            # A thin connector from the straggling original (at the moment the backup
            # started) down to the backup's bar: "this bar was backed up by that one".
            x = b.start - origin
            ax.annotate(
                "",
                xy=(x, row[b.slot]),
                xytext=(x, row[first.slot]),
                arrowprops={"arrowstyle": "->", "color": "#333333", "lw": 0.9, "ls": "--"},
                zorder=5,
            )
            connectors = True

    durations = [span(a)[1] for a in attempts if a.end is not None]
    median = statistics.median(durations) if durations else 0.0
    if median > 0:
        seen = {id(a) for a in labelled}
        labelled.extend(
            a for a in attempts if id(a) not in seen and span(a)[1] > _STRAGGLER_FACTOR * median
        )
    for a in labelled[:_MAX_LABELS]:
        if a.bundle is None:
            continue
        left, width = span(a)
        text = f"#{a.bundle}" + (" backup" if a.is_backup else "")
        ax.text(
            left + width / 2,
            row[a.slot],
            text,
            ha="center",
            va="center",
            fontsize=7.5,
            color="black",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
            zorder=6,
            clip_on=True,
        )

    ax.set_yticks(range(len(slots)))
    ax.set_yticklabels(slots)
    ax.set_ylim(len(slots) - 0.5, -0.5)  # first slot on top
    ax.set_xlim(left=0.0)
    ax.set_xlabel("seconds since the first attempt started")
    ax.set_ylabel("worker slot")
    ax.set_title(f"{name}: {len(attempts)} attempts on {len(slots)} slots")
    ax.grid(axis="x", alpha=0.3)

    present = {a.outcome for a in attempts}
    handles: list[Any] = [
        Patch(facecolor=colour, label=label)
        for outcome, (label, colour) in _STYLES.items()
        if outcome in present
    ]
    if any(a.is_backup for a in attempts):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="backup"))
    if marked:
        handles.append(
            Line2D([], [], color="#b00000", marker="x", linestyle="none", label="failed/lost")
        )
    if connectors:
        handles.append(
            Line2D([], [], color="#333333", linestyle="--", lw=0.9, label="backed up by")
        )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def plot_histogram(stats: ExecutorStats, ax: Axes | None = None, *, bins: int = 30) -> Axes:
    """Task durations on log-spaced bins, with p50/p90/p99 marked; return the Axes."""
    _require_matplotlib()
    counts, edges = stats.histogram(bins=bins)
    if counts.size == 0:
        raise ValueError(f"executor {stats.name!r} has no finished tasks to plot")
    if ax is None:
        ax = _new_axes((8.0, 4.0))
    ax.stairs(counts, edges, fill=True, color="#1f77b4", alpha=0.8)
    ax.set_xscale("log")
    for q, value in stats.percentiles((50.0, 90.0, 99.0)).items():
        ax.axvline(value, color="#444444", linestyle="--", linewidth=0.9)
        ax.text(
            value,
            1.0,
            f" p{q:g}",
            rotation=90,
            va="top",
            fontsize=8,
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xlabel("task duration (s)")
    ax.set_ylabel("tasks")
    ax.set_title(f"{stats.name}: {stats.durations.size} task durations")
    return ax
