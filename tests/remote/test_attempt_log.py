"""The bounded records the scheduler keeps: attempts for the timeline, durations, rate."""

from __future__ import annotations

import pytest

from remote._attempt_log import AttemptLog, FloatRing, RateWindow
from remote._memory import release_memory


def test_attempt_log_keeps_the_last_records_in_order() -> None:
    log = AttemptLog(3)
    for i in range(5):
        log.add(i, 100 + i, f"h{i % 2}", i, float(i), i + 0.5, "won", i % 2 == 0, f"r{i}")
    assert log.total == 5 and len(log) == 3 and log.by_outcome == {"won": 5}
    rows = log.records()
    assert [r["bundle"] for r in rows] == [2, 3, 4]
    assert rows[0] == {
        "bundle": 2,
        "attempt": 102,
        "host": "h0",
        "slot": 2,
        "start": 2.0,
        "end": 2.5,
        "outcome": "won",
        "is_backup": True,
        "reason": "r2",
    }


def test_attempt_log_before_it_wraps_and_when_disabled() -> None:
    log = AttemptLog(10)
    log.add(1, 1, "h", 0, 0.0, 1.0, "lost", False, "killed")
    assert [r["reason"] for r in log.records()] == ["killed"]
    off = AttemptLog(0)
    off.add(1, 1, "h", 0, 0.0, 1.0, "won", False, "")
    assert off.records() == [] and off.total == 1
    with pytest.raises(ValueError):
        AttemptLog(-1)


def test_float_ring_and_rate_window() -> None:
    ring = FloatRing(3)
    for value in (1.0, 2.0, 3.0, 4.0):
        ring.append(value)
    assert sorted(ring.values()) == [2.0, 3.0, 4.0]
    window = RateWindow(10.0)
    assert window.rate(100.0) is None
    for t in (100.1, 100.2, 101.5, 102.9):
        window.add(t)
    assert window.rate(103.0) == pytest.approx(4 / 3.0)
    assert window.rate(200.0) is None  # everything fell out of the window


def test_release_memory_is_harmless() -> None:
    assert release_memory() in (True, False)
