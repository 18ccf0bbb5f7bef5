"""Targets of Method.DASK and Method.RAY on real clusters on loopback, as ratios in one run.

Run: .venv/bin/python -m pytest benchmarks/test_cluster_benchmarks.py -s -p no:cacheprovider

- 2,000 no-op calls through the decorator vs the engine's own submit + gather, on the
  same cluster (a Dask scheduler with two one-thread workers; a Ray head with 2 CPUs).
- Makespan of 12 calls of 1 s on four one-thread Dask workers, one of them ten times slower,
  with speculative backups vs without (``configure(backups=...)``), rounds interleaved.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _ratio import RatioBenchmark

import parallelize as par
from parallelize import Method, parallelize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))
import ray_netns
from engines import DaskCluster, RayCluster
from workloads import noop, sleep_by_worker

N_CALLS = 2_000
TIMEOUT = 300.0

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def dask_two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    cluster = DaskCluster(tmp_path_factory.mktemp("bench-dask"), 2).start()
    yield cluster
    cluster.stop()
    assert cluster.alive() == []


@pytest.fixture(scope="module")
def dask_four_one_slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    cluster = DaskCluster(
        tmp_path_factory.mktemp("bench-dask4"), worker_names=["slow", "a", "b", "c"]
    ).start()
    yield cluster
    cluster.stop()
    assert cluster.alive() == []


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    if ray_netns.inside() is None:
        yield  # the benchmark runs in the namespace's own session (see ray_netns.py)
        return
    pytest.importorskip("ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    if ray.is_initialized():  # the test session's runtime (tests/cluster) is reused
        yield
        return
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="pray", dir="/tmp")), num_cpus=2).start()
    try:
        ray.init(
            address=cluster.address,
            _node_ip_address="127.0.0.1",
            logging_level="ERROR",
            log_to_driver=False,
        )
        yield
    finally:
        ray.shutdown()
        cluster.stop()
    assert cluster.alive() == []


# Five interleaved rounds of 2,000 calls each way take about two minutes on a busy
# two-core machine (the suite's default limit is 120 s); the smoke run takes seconds.
@pytest.mark.timeout(600)
def test_dask_no_op_calls_vs_client_submit(
    ratio_benchmark: RatioBenchmark, dask_two: DaskCluster
) -> None:
    from distributed import Client

    par.configure(dask_address=dask_two.address)
    work = parallelize(method=Method.DASK)(noop)
    with Client(dask_two.address, set_as_default=False) as client:

        def candidate() -> None:
            futures = [work(i) for i in range(N_CALLS)]
            assert sum(f.result(TIMEOUT) for f in futures) == N_CALLS * (N_CALLS - 1) // 2

        def baseline() -> None:
            futures = [client.submit(noop, i, pure=False) for i in range(N_CALLS)]
            assert sum(client.gather(futures)) == N_CALLS * (N_CALLS - 1) // 2

        ratio_benchmark.measure(
            candidate,
            baseline,
            rounds=5,
            max_ratio=1.1,
            what=f"DASK: {N_CALLS} no-op calls vs client.submit(pure=False) + gather",
        )


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_ray_no_op_calls_vs_remote_and_get(
    ratio_benchmark: RatioBenchmark, ray_runtime: None
) -> None:
    import ray

    work = parallelize(method=Method.RAY)(noop)
    remote_noop = ray.remote(noop)

    def candidate() -> None:
        futures = [work(i) for i in range(N_CALLS)]
        assert sum(f.result(TIMEOUT) for f in futures) == N_CALLS * (N_CALLS - 1) // 2

    def baseline() -> None:
        refs = [remote_noop.remote(i) for i in range(N_CALLS)]
        assert sum(ray.get(refs, timeout=TIMEOUT)) == N_CALLS * (N_CALLS - 1) // 2

    ratio_benchmark.measure(
        candidate,
        baseline,
        rounds=5,
        max_ratio=1.1,
        what=f"RAY: {N_CALLS} no-op calls vs f.remote() + ray.get",
    )


def test_dask_backups_cut_the_straggler_makespan(
    ratio_benchmark: RatioBenchmark, dask_four_one_slow: DaskCluster
) -> None:
    # 1 s calls as stated; the suite's smoke run (benchmark disabled) uses 0.2 s calls.
    seconds = 1.0 if ratio_benchmark.enabled else 0.2
    work = parallelize(method=Method.DASK)(sleep_by_worker)
    backups_won: list[int] = []

    def run(backups: bool) -> None:
        par.configure(dask_address=dask_four_one_slow.address, backups=backups)
        executor: Any = par.default_executor(Method.DASK)
        futures = [work(i, seconds, 10.0) for i in range(12)]
        assert sorted(f.result(TIMEOUT) for f in futures) == list(range(12))
        if backups:
            backups_won.append(executor.stats().extra["backups_won"])
        # The slow worker may still be sleeping in a cancelled copy: wait until it is free.
        client = executor.client
        deadline = time.monotonic() + TIMEOUT
        while any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.05)

    ratio_benchmark.measure(
        lambda: run(True),
        lambda: run(False),
        rounds=3,
        max_ratio=0.6,
        what="DASK: makespan of 12 x 1 s calls, one of 4 workers 10x slower, backups vs none",
    )
    assert all(won >= 1 for won in backups_won)
