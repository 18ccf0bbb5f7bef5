"""``f.map`` of many tiny calls against joblib, in one run with rounds interleaved.

Target (issue 10): ``f.map(range(10_000))`` of a no-op on PROCESS with 2 workers costs at
most 1.5x joblib's ``Parallel(n_jobs=2)(delayed(f)(i) for i in range(10_000))``, each
call keeping its own SmartFuture. Under ``--benchmark-disable`` (the test suite's smoke
run) both run once with a small N.

Run: .venv/bin/python -m pytest benchmarks/test_map_benchmarks.py -s -p no:cacheprovider
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _ratio import RatioBenchmark

import parallelize as par
from parallelize import parallelize

joblib = pytest.importorskip("joblib")

WORKERS = 2
N_CALLS = 10_000
N_SMOKE = 200


def noop(x: int) -> int:
    return x


@pytest.fixture
def process_executor() -> Iterator[par.ProcessExecutor]:
    executor = par.ProcessExecutor(WORKERS)
    executor.submit(noop, 0).result()  # workers started before timing
    yield executor
    executor.shutdown()


def test_map_10k_noop_calls_vs_joblib(
    ratio_benchmark: RatioBenchmark, process_executor: par.ProcessExecutor
) -> None:
    n = N_CALLS if ratio_benchmark.enabled else N_SMOKE
    decorated = parallelize(executor=process_executor)(noop)
    parallel = joblib.Parallel(n_jobs=WORKERS)
    parallel(joblib.delayed(noop)(i) for i in range(WORKERS))  # start joblib's workers too

    def candidate() -> None:
        futures = decorated.map(range(n))
        assert [f.result() for f in futures][-1] == n - 1

    def baseline() -> None:
        assert parallel(joblib.delayed(noop)(i) for i in range(n))[-1] == n - 1

    ratio_benchmark.measure(
        candidate,
        baseline,
        rounds=7,
        max_ratio=1.5,
        what=f"PROCESS f.map of {n} no-op calls vs joblib Parallel(n_jobs={WORKERS})",
    )
