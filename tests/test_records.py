"""Typed stats rows: REMOTE gives AttemptRow/HostRow, and the plot and tables read them."""

from __future__ import annotations

import numpy as np
import pytest

from parallelize import AttemptRow, ExecutorStats, HostRow
from parallelize._plot import _parse_attempts
from parallelize._stats import _stats_html as _html
from remote import RemoteExecutor
from remote._pool_config import embedded_pool


def test_remote_stats_carry_typed_rows_and_the_dict_mirror() -> None:
    executor = RemoteExecutor(embedded_pool(2), heartbeat_interval=3600)
    try:
        assert [f.result(60) for f in [executor.submit(abs, -i) for i in range(6)]] == list(
            range(6)
        )
        stats = executor.stats()
    finally:
        executor.shutdown()
    assert len(stats.attempts) == 6
    assert all(isinstance(row, AttemptRow) for row in stats.attempts)
    assert {row.outcome for row in stats.attempts} == {"won"}
    assert all(row.duration is not None and row.duration >= 0 for row in stats.attempts)
    assert [row.bundle for row in stats.attempts] == [a["bundle"] for a in stats.extra["attempts"]]
    (host,) = stats.hosts
    assert isinstance(host, HostRow) and host.name == "local" and host.slots == 2
    assert host.done == 6 and host.lost == 0
    page = _html(stats)
    assert ">hosts</caption>" in page and ">local<" in page


def _stats(**fields: object) -> ExecutorStats:
    return ExecutorStats(
        name="x",
        submitted=1,
        succeeded=1,
        failed=0,
        cancelled=0,
        durations=np.array([1.0]),
        **fields,  # type: ignore[arg-type]
    )


def test_timeline_reads_typed_rows_before_extra() -> None:
    row = AttemptRow(7, 1, "h", "0", 1.0, 2.5, "won", is_backup=True)
    stats = _stats(attempts=(row,), extra={"attempts": "ignored when rows exist"})
    (drawn,) = _parse_attempts(stats)
    assert (drawn.slot, drawn.bundle, drawn.is_backup, drawn.end) == ("h/0", 7, True, 2.5)


def test_timeline_still_reads_dicts_of_other_executors() -> None:
    stats = _stats(extra={"attempts": [{"slot": "w/1", "start": 0, "end": None, "outcome": "x"}]})
    (drawn,) = _parse_attempts(stats)
    assert drawn.slot == "w/1" and drawn.end is None and drawn.outcome == "running"
    with pytest.raises(ValueError, match="does not record a timeline"):
        _parse_attempts(_stats())
