"""Large-data targets of PROCESS (issue 11), against ProcessPoolExecutor in the same run.

Run: .venv/bin/python -m pytest benchmarks/test_large_data.py -s -p no:cacheprovider

* 50 MB float64 array in, same-size array out, 4 concurrent calls on 2 workers:
  time per call <= 0.5 x ProcessPoolExecutor, peak RSS (parent + workers) <=
  ProcessPoolExecutor's (rounds interleaved: the baseline runs in the setup of
  every timed round).
* an idle PROCESS worker after a 50 MB call: RSS within 30 MB of a fresh worker.

See ``_large_data.py`` for the workload and how memory is measured.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pytest
from _large_data import (
    WORKERS,
    MemorySampler,
    concurrent_calls,
    idle_worker_growth,
    make_array,
    mb,
    scale,
    small_numpy_call,
)
from _ratio import RatioBenchmark

import parallelize as par
from parallelize import parallelize

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; memfd is Linux")


@pytest.fixture
def pools() -> Iterator[tuple[ProcessPoolExecutor, par.ProcessExecutor]]:
    std = ProcessPoolExecutor(max_workers=WORKERS)
    ours = par.ProcessExecutor(WORKERS)
    for executor in (std, ours):  # start every worker and import numpy in it
        for future in [executor.submit(small_numpy_call, np.ones(10)) for _ in range(WORKERS)]:
            future.result(60)
    yield std, ours
    std.shutdown()
    ours.shutdown()


def test_process_50mb_arrays_time_and_peak_rss(
    ratio_benchmark: RatioBenchmark, pools: tuple[ProcessPoolExecutor, par.ProcessExecutor]
) -> None:
    std, ours = pools
    decorated = parallelize(executor=ours)(scale)
    array = make_array()

    def call_ours(fn: Any, x: Any) -> Any:
        return decorated(x)

    with MemorySampler() as sampler:

        def candidate() -> None:
            with sampler.phase("ours"):
                concurrent_calls(call_ours, array)

        def baseline() -> None:
            with sampler.phase("std"):
                concurrent_calls(std.submit, array)

        result = ratio_benchmark.measure(
            candidate,
            baseline,
            rounds=5,
            max_ratio=0.5,
            what="PROCESS 4 concurrent calls, 50 MB array in and out, vs ProcessPoolExecutor",
        )
    peak_std, peak_ours = sampler.peak_rss["std"], sampler.peak_rss["ours"]
    used_std, used_ours = sampler.peak_used["std"], sampler.peak_used["ours"]
    print(
        f"peak RSS sum (parent + workers): ProcessPoolExecutor {mb(peak_std)}, "
        f"PROCESS {mb(peak_ours)}; peak memory in use (each page once): "
        f"{mb(used_std)} vs {mb(used_ours)}"
    )
    if result is not None:  # a timed run (not --benchmark-disable)
        ratio_benchmark.benchmark.extra_info.update(
            peak_rss_std=peak_std, peak_rss_ours=peak_ours, used_std=used_std, used_ours=used_ours
        )
        assert peak_ours <= peak_std, f"peak RSS {mb(peak_ours)} above {mb(peak_std)}"


def test_idle_process_worker_returns_memory() -> None:
    fresh, idle = idle_worker_growth(
        lambda: par.ProcessExecutor(1), lambda executor: executor.worker_pids()[0]
    )
    std_fresh, std_idle = idle_worker_growth(
        lambda: ProcessPoolExecutor(1), lambda executor: next(iter(executor._processes))
    )
    print(
        f"\nidle worker after a 50 MB call: PROCESS {mb(fresh)} fresh -> {mb(idle)} "
        f"({(idle - fresh) / 1e6:+.0f} MB); ProcessPoolExecutor {mb(std_fresh)} -> {mb(std_idle)} "
        f"({(std_idle - std_fresh) / 1e6:+.0f} MB)"
    )
    assert idle - fresh <= 30_000_000, f"idle worker grew by {mb(idle - fresh)} (target 30 MB)"
