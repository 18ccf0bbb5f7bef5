"""The scheduler as the pool grows: a simulated fleet (``sim_fleet.py``: links that
complete every attempt at once, no process or network), 20,000 no-op calls through
``RemoteExecutor.submit``.

Run: .venv/bin/python -m pytest benchmarks/test_fleet_benchmarks.py -s

Targets: 1,000 hosts x 8 slots at >= 0.8 x the calls/s of 2 hosts x 2 slots measured in
the same run (rounds interleaved), and ``status()`` within 10 ms at 1,000 hosts with
full latency history. 10,000 hosts x 8 slots is run once and its figures recorded.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest
from sim_fleet import calls_per_second, connect, fleet, status_seconds


def _full(benchmark: Any) -> bool:
    return not getattr(benchmark, "disabled", False)


def test_scheduler_scales_with_the_pool(benchmark: Any) -> None:
    calls = 20_000 if _full(benchmark) else 2_000
    small, large = fleet(2, 2), fleet(1_000, 8)
    try:
        connect(small)
        connect(large)
        rates: dict[str, list[float]] = {"small": [], "large": []}

        def run() -> None:
            rates["small"].append(calls_per_second(small, calls))
            rates["large"].append(calls_per_second(large, calls))

        benchmark.pedantic(run, rounds=3 if _full(benchmark) else 1, warmup_rounds=0)
        ratio = statistics.median(rates["large"]) / statistics.median(rates["small"])
        status_ms = status_seconds(large) * 1e3
        benchmark.extra_info.update(
            small_calls_per_s=statistics.median(rates["small"]),
            large_calls_per_s=statistics.median(rates["large"]),
            ratio=ratio,
            status_ms_1000_hosts=status_ms,
        )
        print(
            f"\n2x2 {statistics.median(rates['small']):.0f} calls/s, 1000x8 "
            f"{statistics.median(rates['large']):.0f} calls/s: ratio {ratio:.2f} (target >= 0.8); "
            f"status() at 1000 hosts {status_ms:.1f} ms (target <= 10)"
        )
        if _full(benchmark):
            assert ratio >= 0.8
            assert status_ms <= 10.0
    finally:
        small.shutdown()
        large.shutdown()


@pytest.mark.parametrize("hosts", [10_000])
def test_ten_thousand_hosts_work(benchmark: Any, hosts: int) -> None:
    calls = 20_000 if _full(benchmark) else 1_000
    executor = fleet(hosts, 8)
    try:
        connect(executor)
        rate: list[float] = []
        benchmark.pedantic(
            lambda: rate.append(calls_per_second(executor, calls)), rounds=1, warmup_rounds=0
        )
        status_ms = status_seconds(executor) * 1e3
        benchmark.extra_info.update(calls_per_s=rate[0], status_ms=status_ms)
        print(f"\n{hosts}x8: {rate[0]:.0f} calls/s, status() {status_ms:.1f} ms")
    finally:
        executor.shutdown()
