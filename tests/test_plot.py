"""ExecutorStats in notebooks (HTML) and pictures (histogram, attempt timeline)."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parallelize import ExecutorStats, ThreadExecutor

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def attempts() -> list[dict[str, Any]]:
    """Two hosts, a straggler (bundle 3) lost and won by its backup, and a failed attempt."""
    rows: list[dict[str, Any]] = []
    for bundle, (slot, start, end) in enumerate(
        [
            ("host1/0", 100.0, 101.0),
            ("host1/1", 100.0, 101.2),
            ("host2/0", 100.1, 101.1),
        ]
    ):
        rows.append(
            {
                "slot": slot,
                "start": start,
                "end": end,
                "outcome": "won",
                "bundle": bundle,
                "is_backup": False,
            }
        )
    rows += [
        {"slot": "host2/1", "start": 100.0, "end": 109.0, "outcome": "lost", "bundle": 3},
        {
            "slot": "host1/0",
            "start": 104.0,
            "end": 105.0,
            "outcome": "won",
            "bundle": 3,
            "is_backup": True,
        },
        {
            "slot": "host10/0",
            "start": 101.0,
            "end": 101.5,
            "outcome": "failed",
            "bundle": 4,
            "is_backup": False,
        },
        {
            "slot": "host10/0",
            "start": 101.6,
            "end": 102.0,
            "outcome": "succeeded",
            "bundle": 4,
            "is_backup": False,
        },
        {
            "slot": "host1/1",
            "start": 102.0,
            "end": 102.1,
            "outcome": "cancelled",
            "bundle": 5,
            "is_backup": False,
        },
    ]
    return rows


def make_stats(**extra: Any) -> ExecutorStats:
    return ExecutorStats(
        name="remote-pool",
        submitted=6,
        succeeded=4,
        failed=1,
        cancelled=1,
        durations=np.array([1.0, 1.2, 1.0, 1.0, 0.4, 0.1, 0.002]),
        extra=extra,
    )


def test_save_timeline_png(tmp_path: Path) -> None:
    stats = make_stats(attempts=attempts())
    out = stats.save_timeline(tmp_path / "timeline.png")
    assert out == tmp_path / "timeline.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000


def test_plot_timeline_contents() -> None:
    import matplotlib.pyplot as plt

    ax = make_stats(attempts=attempts()).plot_timeline()
    try:
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == ["host1/0", "host1/1", "host2/0", "host2/1", "host10/0"]
        texts = [t.get_text() for t in ax.texts]
        assert "#3" in texts  # the straggler
        assert "#3 backup" in texts  # and its backup
        legend = ax.get_legend()
        assert legend is not None
        entries = {t.get_text() for t in legend.get_texts()}
        assert {"won / succeeded", "failed", "lost", "cancelled", "backup"} <= entries
        assert {"failed/lost", "backed up by"} <= entries
        assert len(ax.patches) >= len(attempts())
        assert any(p.get_hatch() for p in ax.patches)  # backups are hatched
    finally:
        plt.close("all")


def test_plot_on_given_axes() -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    stats = make_stats(attempts=attempts())
    assert stats.plot_timeline(ax) is ax
    fig2 = Figure()
    ax2 = fig2.add_subplot()
    assert stats.plot_histogram(ax2) is ax2
    assert ax2.get_xscale() == "log"


def test_histogram_png(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    make_stats().plot_histogram(fig.add_subplot(), bins=5)
    fig.savefig(tmp_path / "hist.png")
    assert (tmp_path / "hist.png").read_bytes().startswith(PNG_MAGIC)


def test_histogram_needs_durations() -> None:
    stats = ExecutorStats("empty", 0, 0, 0, 0, np.zeros(0))
    with pytest.raises(ValueError, match="no finished tasks"):
        stats.plot_histogram()


def test_timeline_needs_attempts(tmp_path: Path) -> None:
    with ThreadExecutor(1, name="threads") as executor:
        executor.submit(int).result()
        stats = executor.stats()
    with pytest.raises(ValueError, match="does not record a timeline"):
        stats.plot_timeline()
    with pytest.raises(ValueError, match="does not record a timeline"):
        stats.save_timeline(tmp_path / "x.png")


def test_timeline_rejects_malformed_attempts() -> None:
    with pytest.raises(ValueError, match="lacks"):
        make_stats(attempts=[{"slot": "a", "start": 0.0}]).plot_timeline()


def test_timeline_with_running_attempt(tmp_path: Path) -> None:
    rows = [
        *attempts(),
        {"slot": "host2/0", "start": 102.0, "end": None, "outcome": "running", "bundle": 9},
    ]
    assert make_stats(attempts=rows).save_timeline(tmp_path / "t.svg").stat().st_size > 0


def test_missing_matplotlib_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    stats = make_stats(attempts=attempts())
    with pytest.raises(ImportError, match=r"pip install 'parallelize\[plot\]'"):
        stats.plot_timeline()
    with pytest.raises(ImportError, match=r"pip install 'parallelize\[plot\]'"):
        stats.plot_histogram()


# ----------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------


def test_repr_html_tables() -> None:
    html = make_stats(policy="round-robin")._repr_html_()
    for word in ("submitted", "succeeded", "failed", "cancelled", "live"):
        assert f">{word}<" in html
    for col in ("mean", "p50", "p90", "p95", "p99", "max"):
        assert f">{col}<" in html
    assert "round-robin" in html
    assert "hosts" not in html


def test_repr_html_hosts_and_escaping() -> None:
    hosts = [
        {"host": "<script>alert(1)</script>", "slots": 4, "in flight": 2},
        {"host": "b&b", "slots": 2, "rtt": 0.012345, "<col>": "x"},
    ]
    stats = ExecutorStats(
        name="pool <&>",
        submitted=1,
        succeeded=0,
        failed=0,
        cancelled=0,
        durations=np.zeros(0),
        extra={"hosts": hosts, "note": '"quoted"'},
    )
    html = stats._repr_html_()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "b&amp;b" in html
    assert "pool &lt;&amp;&gt;" in html
    assert "&lt;col&gt;" in html
    assert "&quot;quoted&quot;" in html
    assert ">0.01235<" in html
    assert "no finished tasks yet" in html
    for col in ("host", "slots", "in flight", "rtt"):
        assert f">{col}<" in html


def test_live_executor_stats_html() -> None:
    with ThreadExecutor(2, name="t") as executor:
        for future in [executor.submit(pow, 2, i) for i in range(4)]:
            future.result()
        html = executor.stats()._repr_html_()
    assert ">4<" in html


def test_html_hosts_table_accepts_rows_keyed_by_host_name() -> None:
    from parallelize._stats import TaskStats

    stats = TaskStats().snapshot("remote", hosts={"node<1>": {"state": "up", "done": 3}})
    html = stats._repr_html_()
    assert "node&lt;1&gt;" in html and ">state</th>" in html
