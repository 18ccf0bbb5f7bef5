"""Performance targets of the local core (THREAD and PROCESS), as ratios in one run.

Run: .venv/bin/python -m pytest benchmarks/test_local_benchmarks.py -s
"""

from __future__ import annotations

import os
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _ratio import RatioBenchmark

import parallelize as par
from parallelize import Method, SmartFuture, parallelize

N_CALLS = 10_000
WORKERS = 2


def noop() -> None:
    return None


def burn_cpu(loops: int) -> int:
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


def wait_for_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


def _calibrate_50ms() -> int:
    loops = 100_000
    while True:
        start = time.perf_counter()
        burn_cpu(loops)
        elapsed = time.perf_counter() - start
        if elapsed > 0.01:
            return int(loops * 0.05 / elapsed)
        loops *= 2


@pytest.fixture
def thread_pools() -> Iterator[tuple[ThreadPoolExecutor, par.ThreadExecutor]]:
    std = ThreadPoolExecutor(max_workers=WORKERS)
    ours = par.ThreadExecutor(WORKERS)
    yield std, ours
    std.shutdown()
    ours.shutdown()


@pytest.fixture
def process_pools() -> Iterator[tuple[ProcessPoolExecutor, par.ProcessExecutor]]:
    std = ProcessPoolExecutor(max_workers=WORKERS)
    ours = par.ProcessExecutor(WORKERS)
    # Start the workers of both before timing.
    std.submit(noop).result()
    ours.submit(noop).result()
    yield std, ours
    std.shutdown()
    ours.shutdown()


def _submit_all_then_gather(submit: Callable[[], Future[None] | SmartFuture[None]]) -> None:
    futures = [submit() for _ in range(N_CALLS)]
    for f in futures:
        f.result()


def _measure_10k_noop_calls(
    ratio_benchmark: RatioBenchmark, std: Executor, ours: Executor, **options: Any
) -> None:
    decorated = parallelize(executor=ours)(noop)
    ratio_benchmark.measure(
        lambda: _submit_all_then_gather(decorated),
        lambda: _submit_all_then_gather(lambda: std.submit(noop)),
        **options,
    )


def test_thread_10k_noop_calls(ratio_benchmark: RatioBenchmark, thread_pools: tuple) -> None:
    _measure_10k_noop_calls(
        ratio_benchmark,
        *thread_pools,
        rounds=7,
        max_ratio=1.3,
        what="THREAD 10k no-op calls, @parallelize vs ThreadPoolExecutor",
    )


def test_process_10k_noop_calls(ratio_benchmark: RatioBenchmark, process_pools: tuple) -> None:
    _measure_10k_noop_calls(
        ratio_benchmark,
        *process_pools,
        rounds=5,
        max_ratio=0.5,
        what="PROCESS 10k no-op calls, @parallelize vs ProcessPoolExecutor",
    )


def test_process_single_round_trip(ratio_benchmark: RatioBenchmark, process_pools: tuple) -> None:
    std, ours = process_pools
    decorated = parallelize(executor=ours)(noop)
    trips = 200

    def baseline() -> None:
        for _ in range(trips):
            std.submit(noop).result()

    def candidate() -> None:
        for _ in range(trips):
            decorated().result()

    ratio_benchmark.measure(
        candidate,
        baseline,
        rounds=7,
        max_ratio=1.0,
        what=f"PROCESS {trips} sequential round trips vs ProcessPoolExecutor",
    )


def test_process_cpu_bound_speedup(ratio_benchmark: RatioBenchmark, process_pools: tuple) -> None:
    _, ours = process_pools
    loops = _calibrate_50ms()
    decorated = parallelize(executor=ours)(burn_cpu)

    def sequential() -> None:
        for _ in range(16):
            burn_cpu(loops)

    def candidate() -> None:
        for f in [decorated(loops) for _ in range(16)]:
            f.result()

    ratio_benchmark.measure(
        candidate,
        sequential,
        rounds=3,
        max_ratio=1 / 1.7,
        what="PROCESS 16 x 50 ms CPU-bound on 2 processes vs sequential",
    )


@pytest.mark.parametrize("method", [Method.THREAD, Method.PROCESS])
def test_memory_per_pending_call(method: Method) -> None:
    """100,000 pending decorated calls cost at most 2.5 KB each in the caller."""
    pending = 100_000
    gate = Path(tempfile.mkdtemp()) / "open"
    executor = par.ThreadExecutor(1) if method is Method.THREAD else par.ProcessExecutor(1)
    decorated = parallelize(executor=executor)(noop)
    blocker = parallelize(executor=executor)(wait_for_file)(str(gate))
    try:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        futures = [decorated() for _ in range(pending)]
        per_call = (tracemalloc.get_traced_memory()[0] - before) / pending
        tracemalloc.stop()
        print(f"\n{method.name}: {per_call:.0f} bytes per pending call")
        assert per_call <= 2500, f"{per_call:.0f} bytes per pending call (target 2,500)"
        assert not blocker.done()
    finally:
        gate.touch()
        executor.shutdown(wait=True)
    assert all(f.done() for f in futures)
