"""REMOTE's tail-tolerance targets (issue 7), against real OpenSSH servers on loopback.

Run: .venv/bin/python -m pytest benchmarks/test_remote_fault_benchmarks.py -s -p no:randomly

Each scenario runs its baseline and its candidate back to back in one process (the
machine is shared; a makespan is compared with the same job on the healthy part of
the pool, measured moments before). With ``--benchmark-disable`` (the test suite's
smoke run) every scenario runs once, scaled down (shorter calls, fewer of them), and
only the behaviour is checked, not the ratios.

| scenario | target |
| 60 x 1 s on 3 hosts x 2 slots, one host 10x slower, default settings | <= 1.1 x the same
  calls on the 2 healthy hosts (the capacity bound) |
| 200 calls of 50-150 ms, healthy pool | backups <= 5% of calls; makespan <= 1.05 x backups off |
| 600 x 100 ms, one of 3 hosts cut off at t = 0.5 s | <= 1.15 x the 2-host makespan; the host
  is suspect within 3 s |
| every host cut off, host_down_timeout = 10 | every pending call failed within 10 +
  stall_timeout + 2 s |
| 20,000 no-op calls, futures dropped | RSS back within 10 MB; >= 4,000 calls/s on 2 x 2 |
"""

from __future__ import annotations

import gc
import os
import random
import sys
import time
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from bench_remote import connect_all, noop

from remote import RemoteExecutor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "remote"))
from faults import Faults
from sshd import SshdPool

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # hosts cannot import this module


def slow_or_fast(seconds: float, slow: str) -> str:
    host = os.environ.get("PARALLELIZE_TEST_HOST", "?")
    time.sleep(seconds * (10 if host == slow else 1))
    return host


@pytest.fixture
def faults(sshd_pool: SshdPool) -> Iterator[Faults]:
    found = Faults(sshd_pool)
    try:
        yield found
    finally:
        found.heal_all()


def full(benchmark: Any) -> bool:
    return not getattr(benchmark, "disabled", False)


def makespan(executor: RemoteExecutor, calls: list[tuple[Any, ...]]) -> float:
    start = time.monotonic()
    futures = [executor.submit(*call) for call in calls]
    done, _ = wait(futures, 600)
    assert len(done) == len(futures)
    for future in futures:
        future.result()
    return time.monotonic() - start


def record(benchmark: Any, **info: Any) -> None:
    benchmark.extra_info.update(info)
    print(
        "\n"
        + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
    )


def test_slow_host_at_default_settings(benchmark: Any, sshd_pool: SshdPool) -> None:
    seconds, n = (1.0, 60) if full(benchmark) else (0.05, 60)
    specs = sshd_pool.specs(3, slots=2, first=1)
    slow = specs[2].name
    healthy = RemoteExecutor(specs[:2])  # the capacity bound: the 2 fast hosts alone
    pool = RemoteExecutor(specs)  # default settings
    try:
        connect_all(healthy)
        connect_all(pool)
        calls = [(slow_or_fast, seconds, slow)] * n
        results: dict[str, float] = {}

        def run() -> None:
            results["bound"] = makespan(healthy, calls)
            results["pool"] = makespan(pool, calls)

        benchmark.pedantic(run, rounds=1, warmup_rounds=0)
        extra = pool.stats().extra
        ratio = results["pool"] / results["bound"]
        record(
            benchmark,
            what=f"{n} x {seconds:g} s, 3 hosts x 2 slots, one 10x slower, default settings",
            makespan_s=results["pool"],
            two_host_bound_s=results["bound"],
            ratio=ratio,
            backups_started=extra["backups_started"],
            backups_won=extra["backups_won"],
        )
        if full(benchmark):
            assert ratio <= 1.1, f"makespan {ratio:.2f} x the capacity bound (target 1.1)"
    finally:
        healthy.shutdown()
        pool.shutdown()


def test_healthy_pool_with_jitter_wastes_little(benchmark: Any, sshd_pool: SshdPool) -> None:
    scale = 1.0 if full(benchmark) else 0.2
    rng = random.Random(7)
    calls = [(time.sleep, rng.uniform(0.05, 0.15) * scale) for _ in range(200)]
    specs = sshd_pool.specs(3, slots=2, first=1)
    with_backups = RemoteExecutor(specs)
    without = RemoteExecutor(specs, backups=False)
    try:
        connect_all(with_backups)
        connect_all(without)
        results: dict[str, float] = {}

        def run() -> None:
            results["off"] = makespan(without, calls)
            results["on"] = makespan(with_backups, calls)

        benchmark.pedantic(run, rounds=1, warmup_rounds=0)
        extra = with_backups.stats().extra
        ratio = results["on"] / results["off"]
        record(
            benchmark,
            what="200 calls of 50-150 ms on a healthy 3 x 2 pool, backups on vs off",
            makespan_on_s=results["on"],
            makespan_off_s=results["off"],
            ratio=ratio,
            backups_started=extra["backups_started"],
        )
        assert extra["backups_started"] <= 0.05 * len(calls)
        if full(benchmark):
            assert ratio <= 1.05
    finally:
        with_backups.shutdown()
        without.shutdown()


def test_cut_off_host(benchmark: Any, sshd_pool: SshdPool, faults: Faults) -> None:
    seconds, n = (0.1, 600) if full(benchmark) else (0.02, 300)
    specs = sshd_pool.specs(3, slots=2, first=1)
    two = RemoteExecutor(specs[:2])
    pool = RemoteExecutor(specs)
    victim = specs[2].name
    try:
        connect_all(two)
        connect_all(pool)
        calls = [(time.sleep, seconds)] * n
        results: dict[str, float] = {}

        def run() -> None:
            results["bound"] = makespan(two, calls)
            start = time.monotonic()
            futures = [pool.submit(*call) for call in calls]
            while time.monotonic() - start < 0.5:
                time.sleep(0.01)
            faults.blackhole(specs[2])
            cut = time.monotonic()
            while pool.stats().extra["hosts"][victim]["state"] == "up":
                assert time.monotonic() - cut < 60, "the cut-off host never turned suspect"
                time.sleep(0.02)
            results["suspect_after"] = time.monotonic() - cut
            done, _ = wait(futures, 600)
            assert len(done) == n
            for future in futures:
                future.result()
            results["pool"] = time.monotonic() - start

        benchmark.pedantic(run, rounds=1, warmup_rounds=0)
        ratio = results["pool"] / results["bound"]
        record(
            benchmark,
            what=f"{n} x {seconds * 1e3:.0f} ms, one of 3 hosts cut off at 0.5 s (iptables DROP)",
            makespan_s=results["pool"],
            two_host_bound_s=results["bound"],
            ratio=ratio,
            suspect_after_s=results["suspect_after"],
        )
        if full(benchmark):
            assert results["suspect_after"] <= 3.0
            assert ratio <= 1.15
    finally:
        faults.heal_all()
        two.shutdown(wait=False, cancel_futures=True)
        pool.shutdown(wait=False, cancel_futures=True)


def test_every_host_cut_off(benchmark: Any, sshd_pool: SshdPool, faults: Faults) -> None:
    down, stall = (10.0, 10.0) if full(benchmark) else (2.0, 2.0)
    specs = sshd_pool.specs(2, slots=2, first=1)
    pool = RemoteExecutor(specs, host_down_timeout=down, stall_timeout=stall)
    try:
        connect_all(pool)
        results: dict[str, float] = {}

        def run() -> None:
            running = [pool.submit(time.sleep, 60) for _ in range(4)]
            for spec in specs:
                faults.blackhole(spec)
            cut = time.monotonic()
            queued = [pool.submit(time.sleep, 0) for _ in range(10)]
            done, _ = wait(running + queued, 600)
            results["failed_after"] = time.monotonic() - cut
            assert len(done) == 14 and all(f.exception() is not None for f in done)

        benchmark.pedantic(run, rounds=1, warmup_rounds=0)
        record(
            benchmark,
            what=f"every host cut off, host_down_timeout={down:g}, stall_timeout={stall:g}",
            failed_after_s=results["failed_after"],
            limit_s=down + stall + 2,
        )
        assert results["failed_after"] <= down + stall + 2
    finally:
        faults.heal_all()
        pool.shutdown(wait=False, cancel_futures=True)


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_is_released_after_many_calls(benchmark: Any, sshd_pool: SshdPool) -> None:
    n = 20_000 if full(benchmark) else 2_000
    specs = sshd_pool.specs(2, slots=2, first=1)
    pool = RemoteExecutor(specs, backups=False)
    try:
        connect_all(pool)
        # one small round first: what a used executor keeps whatever the run's size
        wait([pool.submit(noop) for _ in range(2_000)], 600)
        gc.collect()
        before = _rss()
        results: dict[str, float] = {}

        def run() -> None:
            start = time.monotonic()
            futures = [pool.submit(noop) for _ in range(n)]
            done, _ = wait(futures, 600)
            assert len(done) == n
            results["rate"] = n / (time.monotonic() - start)
            del futures, done

        benchmark.pedantic(run, rounds=1, warmup_rounds=0)
        gc.collect()
        # an idle executor gives the run's freed memory back shortly after (see
        # Scheduler._idle_memory): wait for it, as long as 5 s
        deadline = time.monotonic() + 5.0
        while (_rss() - before) / 2**20 > 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        grown = (_rss() - before) / 2**20
        record(
            benchmark,
            what=f"{n} no-op calls on 2 hosts x 2 slots, futures dropped",
            calls_per_s=results["rate"],
            rss_growth_mb=grown,
        )
        if full(benchmark):
            assert grown <= 10, f"controller RSS grew {grown:.1f} MB"
            assert results["rate"] >= 4000
    finally:
        pool.shutdown()


def test_unknown_host_key_fails_fast(benchmark: Any, sshd_pool: SshdPool) -> None:
    specs = sshd_pool.specs(2, slots=1, first=1, strict_host_key_checking=True)
    pool = RemoteExecutor(specs, host_down_timeout=600.0)  # the user's known_hosts: unknown
    results: dict[str, float] = {}
    try:

        def run() -> None:
            start = time.monotonic()
            error = pool.submit(noop).exception(120)
            results["failed_after"] = time.monotonic() - start
            assert error is not None and "unknown host key" in str(error)

        benchmark.pedantic(run, rounds=1, warmup_rounds=0)
        record(
            benchmark,
            what="unknown host key on every host: the first call's error",
            failed_after_s=results["failed_after"],
            limit_s=10.0 + 1.0,
        )
        assert results["failed_after"] <= 10.0 + 1.0  # connect_timeout + 1 s
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


_EXIT_SCRIPT = """
import os, sys, time
from parallelize import parallelize, Method

@parallelize(method=Method.REMOTE)
def task(i, log, seconds):
    time.sleep(seconds)
    with open(log, "a") as handle:
        handle.write(f"{i} {time.time()}\\n")
    return i

futures = [task(i, sys.argv[1], float(sys.argv[2])) for i in range(12)]
# no shutdown(): the interpreter exits with the calls in flight
"""


def test_exit_with_calls_in_flight(
    benchmark: Any, sshd_pool: SshdPool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import subprocess

    seconds = 2.0 if full(benchmark) else 0.2
    specs = sshd_pool.specs(2, slots=6, first=1)
    tmp = tmp_path_factory.mktemp("exit")
    pool_file = tmp / "pool.toml"
    SshdPool.write_pool_file(specs, pool_file)
    script = tmp / "script.py"
    script.write_text(_EXIT_SCRIPT)
    log = tmp / "runs.log"
    env = dict(os.environ, PARALLELIZE_POOL_FILE=str(pool_file))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    results: dict[str, float] = {}

    def run() -> None:
        log.write_text("")
        subprocess.run(
            [sys.executable, str(script), str(log), str(seconds)],
            env=env,
            check=True,
            timeout=120,
            capture_output=True,
        )
        ended = time.time()
        runs = [line.split() for line in log.read_text().splitlines()]
        results["runs"] = len(runs)
        results["distinct"] = len({r[0] for r in runs})
        results["exit_after_last_call_s"] = ended - max(float(r[1]) for r in runs)

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    record(
        benchmark,
        what=f"script ends without shutdown() while 12 calls of {seconds:g} s run",
        **results,
    )
    assert results["runs"] == 12 and results["distinct"] == 12
    assert results["exit_after_last_call_s"] <= 3.0
