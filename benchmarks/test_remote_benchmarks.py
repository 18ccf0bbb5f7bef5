"""Performance targets of REMOTE, against real OpenSSH servers on loopback.

Run: .venv/bin/python -m pytest benchmarks/test_remote_benchmarks.py -s

The issue states two targets in absolute terms (round trip under 2 ms,
2,000 calls/s); they are checked as such, and the ratio to the standard
library's process pool doing the same calls in the same run is recorded for
context. The straggler target is a ratio of makespans, both measured here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _ratio import RatioBenchmark
from bench_remote import SLOW_HOSTS, connect_all, noop, work

from remote import RemoteExecutor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "remote"))
from sshd import SshdPool

TASKS = 24  # four waves of the healthy pool's six slots
TASK_SECONDS = 0.1
HEARTBEAT = 0.05
# One host of three at a tenth of the speed leaves 4.2 of 6 slots' capacity,
# and in whole tasks no schedule of this job beats 6 waves instead of 4: 1.5x.
MAKESPAN_LOWER_BOUND = 1.5


def _executor(specs: list[Any], **options: Any) -> RemoteExecutor:
    executor = RemoteExecutor(specs, **options)
    connect_all(executor)
    return executor


@pytest.fixture
def std_pool() -> Iterator[ProcessPoolExecutor]:
    pool = ProcessPoolExecutor(4)
    pool.submit(noop).result()
    yield pool
    pool.shutdown()


def test_remote_round_trip(
    ratio_benchmark: RatioBenchmark, sshd_pool: SshdPool, std_pool: ProcessPoolExecutor
) -> None:
    (spec,) = sshd_pool.specs(1, slots=1, first=1)
    executor = _executor([spec], backups=False)
    trips = 100
    try:

        def candidate() -> None:
            for _ in range(trips):
                executor.submit(noop).result(60)

        def baseline() -> None:
            for _ in range(trips):
                std_pool.submit(noop).result(60)

        result = ratio_benchmark.measure(
            candidate,
            baseline,
            rounds=7,
            max_ratio=float("inf"),  # context only
            max_candidate_seconds=trips * 0.002,
            what=f"REMOTE {trips} sequential no-op round trips over SSH vs ProcessPoolExecutor",
        )
        if result is not None:
            print(
                f"REMOTE round trip: {result.candidate_median / trips * 1e3:.3f} ms per call "
                "(target < 2 ms)"
            )
    finally:
        executor.shutdown()


def test_remote_throughput(
    ratio_benchmark: RatioBenchmark, sshd_pool: SshdPool, std_pool: ProcessPoolExecutor
) -> None:
    specs = sshd_pool.specs(2, slots=2, first=1)
    executor = _executor(specs, backups=False)
    calls = 2000
    try:

        def candidate() -> None:
            for f in [executor.submit(noop) for _ in range(calls)]:
                f.result(120)

        def baseline() -> None:
            for f in [std_pool.submit(noop) for _ in range(calls)]:
                f.result(120)

        result = ratio_benchmark.measure(
            candidate,
            baseline,
            rounds=5,
            max_ratio=float("inf"),  # context only
            max_candidate_seconds=1.0,
            what=f"REMOTE {calls} no-op calls over 2 hosts x 2 slots vs ProcessPoolExecutor(4)",
        )
        if result is not None:
            print(
                f"REMOTE throughput: {calls / result.candidate_median:.0f} calls/s (target >= 2000)"
            )
    finally:
        executor.shutdown()


def _run_job(executor: RemoteExecutor) -> list[str]:
    slow = frozenset(SLOW_HOSTS)
    return [
        f.result(300) for f in [executor.submit(work, TASK_SECONDS, slow) for _ in range(TASKS)]
    ]


@pytest.mark.parametrize("backups", [True, False], ids=["backups-on", "backups-off"])
def test_remote_straggler_makespan(
    ratio_benchmark: RatioBenchmark, sshd_pool: SshdPool, backups: bool
) -> None:
    healthy_specs = sshd_pool.specs(3, slots=2, first=1)
    straggler_specs = sshd_pool.specs(3, slots=2, first=4)
    SLOW_HOSTS.add(straggler_specs[2].name)  # tasks run 10x slower there
    healthy = _executor(healthy_specs, heartbeat_interval=HEARTBEAT)
    straggling = _executor(straggler_specs, heartbeat_interval=HEARTBEAT, backups=backups)
    try:
        what = (
            f"REMOTE makespan, {TASKS} x {TASK_SECONDS * 1e3:.0f} ms on 3 hosts x 2 slots, "
            f"one host 10x slower, backups {'on' if backups else 'off'}, vs 3 healthy hosts"
        )
        # The issue asked for 1.25x with backups; no schedule can beat 1.5x for this
        # job (see MAKESPAN_LOWER_BOUND), so the target is within 20% of that bound.
        result = ratio_benchmark.measure(
            lambda: _run_job(straggling),
            lambda: _run_job(healthy),
            rounds=3,
            max_ratio=MAKESPAN_LOWER_BOUND * 1.2 if backups else float("inf"),
            what=what,
        )
        extra = straggling.stats().extra
        print(f"backups started {extra['backups_started']}, won {extra['backups_won']}")
        if result is not None:
            # Sanity: a run faster than the bound means the straggler was not slow.
            assert result.ratio >= MAKESPAN_LOWER_BOUND * 0.95, result
            if backups:
                assert extra["backups_won"] > 0
            else:
                assert extra["backups_started"] == 0
    finally:
        SLOW_HOSTS.discard(straggler_specs[2].name)
        healthy.shutdown()
        straggling.shutdown()
