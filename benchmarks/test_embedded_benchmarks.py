"""Per-call overhead of REMOTE's embedded pool against PROCESS (issue 9), one run.

Run: .venv/bin/python -m pytest benchmarks/test_embedded_benchmarks.py -s -p no:cacheprovider

10,000 no-op calls submitted then gathered, 2 workers each: a RemoteExecutor on the
embedded pool (PROCESS workers behind REMOTE's scheduler, remote/_process_link.py)
against a ProcessExecutor; rounds interleaved (benchmarks/_ratio.py), each after a full
collection of the cyclic GC. Target <= 1.5.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor

import pytest
from _ratio import RatioBenchmark

import parallelize as par
from remote import RemoteExecutor
from remote._pool_config import embedded_pool

N_CALLS = 10_000
WORKERS = 2


def noop() -> None:
    return None


def _submit_all_then_gather(executor: Executor) -> None:
    futures = [executor.submit(noop) for _ in range(N_CALLS)]
    for future in futures:
        future.result()


@pytest.fixture
def pools() -> Iterator[tuple[par.ProcessExecutor, RemoteExecutor]]:
    process = par.ProcessExecutor(WORKERS)
    remote = RemoteExecutor(embedded_pool(WORKERS), heartbeat_interval=3600)
    for executor in (process, remote):  # start every worker before timing
        futures = [executor.submit(noop) for _ in range(4 * WORKERS)]
        for future in futures:
            future.result(60)
    yield process, remote
    process.shutdown()
    remote.shutdown()


def test_embedded_remote_10k_noop_calls(
    ratio_benchmark: RatioBenchmark, pools: tuple[par.ProcessExecutor, RemoteExecutor]
) -> None:
    process, remote = pools
    ratio_benchmark.measure(
        lambda: _submit_all_then_gather(remote),
        lambda: _submit_all_then_gather(process),
        rounds=5,
        max_ratio=1.5,
        what="embedded REMOTE vs PROCESS, 10,000 no-op calls",
        collect_garbage=True,  # each side pays for its own 10,000 futures (see _ratio)
    )
