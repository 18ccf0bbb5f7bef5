#!/usr/bin/env python
"""Benchmarks of the REMOTE executor: latency, throughput, stragglers.

Run from the repository root::

    .venv/bin/python benchmarks/bench_remote.py                  # local agents over pipes
    .venv/bin/python benchmarks/bench_remote.py --transport ssh  # real sshd on 127.0.0.x

1. round trip: median time of ``submit(noop).result()`` on one host, one slot
   (target < 2 ms);
2. throughput: no-op calls per second over 2 hosts x 2 slots (target >= 2,000/s);
3. stragglers: makespan of a job on 3 hosts x 2 slots where one host runs every
   task 10x slower, with backups and without, relative to 3 healthy hosts
   (target <= 1.25x with backups).

Each host is told who it is through ``PARALLELIZE_TEST_HOST`` (a wrapper script
around the interpreter for local agents; the sshd fixture's environment over
SSH), and the straggler task sleeps 10x longer on the host named ``slow``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cloudpickle  # noqa: E402

from remote._executor import RemoteExecutor  # noqa: E402
from remote._link import HostSpec  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # hosts cannot import this script

SpecMaker = Callable[[list[tuple[str, int]]], contextlib.AbstractContextManager[list[HostSpec]]]


def noop() -> None:
    return None


SLOW_HOSTS = {"slow"}


def work(seconds: float, slow: frozenset[str]) -> str:
    host = os.environ.get("PARALLELIZE_TEST_HOST", "?")
    time.sleep(seconds * (10 if host in slow else 1))
    return host


@contextlib.contextmanager
def local_specs(hosts: list[tuple[str, int]]) -> Iterator[list[HostSpec]]:
    """Local agents; each gets PARALLELIZE_TEST_HOST from a wrapper around the interpreter."""
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        specs = []
        for name, slots in hosts:
            wrapper = Path(tmp) / f"python-{name}"
            wrapper.write_text(
                f'#!/bin/sh\nPARALLELIZE_TEST_HOST={name} exec {sys.executable} "$@"\n'
            )
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
            specs.append(
                HostSpec(name=name, host="local", slots=slots, python=str(wrapper), is_local=True)
            )
        yield specs


@contextlib.contextmanager
def ssh_specs(hosts: list[tuple[str, int]]) -> Iterator[list[HostSpec]]:
    """Real OpenSSH servers on 127.0.0.2, 127.0.0.3, ... (the test suite's helper); the
    straggler is the host given the name ``slow`` here (its sshd name is hostN)."""
    sys.path.insert(0, str(ROOT / "tests" / "remote"))
    from sshd import SshdPool

    with tempfile.TemporaryDirectory(prefix="bench-sshd-") as tmp:
        pool = SshdPool(Path(tmp))
        try:
            specs = []
            for index, (name, slots) in enumerate(hosts, 1):
                (spec,) = pool.specs(1, slots=slots, first=index)
                if name == "slow":
                    SLOW_HOSTS.add(spec.name)
                specs.append(spec)
            yield specs
        finally:
            pool.stop_all()
            SLOW_HOSTS.clear()
            SLOW_HOSTS.add("slow")


def connect_all(ex: RemoteExecutor) -> None:
    """Connections are lazy: make the first call, then wait for every host to be up."""
    ex.submit(noop).result(60)
    deadline = time.monotonic() + 60
    while not all(h["state"] == "up" for h in ex.stats().extra["hosts"].values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"hosts not up: {ex.stats().extra['hosts']}")
        time.sleep(0.01)


def run_round_trip(make: SpecMaker, n: int) -> dict[str, float]:
    with make([("a", 1)]) as specs:
        ex = RemoteExecutor(specs, backups=False)
        try:
            for _ in range(50):
                ex.submit(noop).result(60)
            times = []
            for _ in range(n):
                start = time.perf_counter()
                ex.submit(noop).result(60)
                times.append(time.perf_counter() - start)
        finally:
            ex.shutdown()
    times.sort()
    return {
        "median_ms": statistics.median(times) * 1e3,
        "p95_ms": times[int(len(times) * 0.95)] * 1e3,
    }


def run_throughput(make: SpecMaker, n: int) -> dict[str, float]:
    with make([("a", 2), ("b", 2)]) as specs:
        ex = RemoteExecutor(specs, backups=False)
        try:
            connect_all(ex)
            [f.result(60) for f in [ex.submit(noop) for _ in range(200)]]  # warm up
            start = time.perf_counter()
            futures = [ex.submit(noop) for _ in range(n)]
            for f in futures:
                f.result(120)
            elapsed = time.perf_counter() - start
            per_host = {h: d["done"] for h, d in ex.stats().extra["hosts"].items()}
        finally:
            ex.shutdown()
    return {
        "calls_per_s": n / elapsed,
        "seconds": elapsed,
        **{f"done_{h}": v for h, v in per_host.items()},
    }


def run_makespan(
    make: SpecMaker, names: list[str], n: int, seconds: float, backups: bool, heartbeat: float
) -> dict[str, Any]:
    with make([(name, 2) for name in names]) as specs:
        ex = RemoteExecutor(specs, backups=backups, heartbeat_interval=heartbeat)
        try:
            connect_all(ex)
            start = time.perf_counter()
            slow = frozenset(SLOW_HOSTS)
            futures = [ex.submit(work, seconds, slow) for _ in range(n)]
            winners = [f.result(300) for f in futures]
            elapsed = time.perf_counter() - start
            extra = ex.stats().extra
        finally:
            ex.shutdown()
    return {
        "makespan": elapsed,
        "backups_started": extra["backups_started"],
        "backups_won": extra["backups_won"],
        "results_from_slow": sum(w in slow for w in winners),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", choices=("local", "ssh"), default="local")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--task-seconds", type=float, default=0.1)
    parser.add_argument(
        "--waves",
        type=int,
        default=4,
        help="straggler job size, in waves of the healthy pool's 6 slots",
    )
    parser.add_argument("--heartbeat", type=float, default=0.05)
    opts = parser.parse_args()
    make: SpecMaker = local_specs if opts.transport == "local" else ssh_specs
    print(
        f"transport: {opts.transport}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )

    rt = run_round_trip(make, 200 if opts.quick else 1000)
    print(
        f"round trip (1 host x 1 slot): median {rt['median_ms']:.3f} ms, "
        f"p95 {rt['p95_ms']:.3f} ms   [target: median < 2 ms]"
    )

    tp = run_throughput(make, 4000 if opts.quick else 20000)
    spread = ", ".join(f"{k[5:]}: {v}" for k, v in tp.items() if k.startswith("done_"))
    print(
        f"throughput (2 hosts x 2 slots): {tp['calls_per_s']:,.0f} calls/s "
        f"({tp['seconds']:.2f} s; per host {spread})   [target: >= 2,000 calls/s]"
    )

    n = 6 * opts.waves
    d = opts.task_seconds
    healthy = run_makespan(make, ["h1", "h2", "h3"], n, d, True, opts.heartbeat)
    with_b = run_makespan(make, ["h1", "h2", "slow"], n, d, True, opts.heartbeat)
    without = run_makespan(make, ["h1", "h2", "slow"], n, d, False, opts.heartbeat)
    base = healthy["makespan"]
    # capacity bound: 4 healthy slots + 2 slots at 1/10 speed vs 6 healthy slots
    bound = 6 / (4 + 2 / 10)
    print(
        f"stragglers: {n} tasks of {d * 1e3:.0f} ms (10x on 'slow'), 3 hosts x 2 slots, "
        f"heartbeat {opts.heartbeat:g} s"
    )
    print(f"  3 healthy hosts:          {base:.3f} s")
    print(
        f"  1 slow host, backups on:  {with_b['makespan']:.3f} s = "
        f"{with_b['makespan'] / base:.2f}x   [target <= 1.25x; "
        f"{with_b['backups_started']} backups, {with_b['backups_won']} won, "
        f"{with_b['results_from_slow']} results from 'slow']"
    )
    print(
        f"  1 slow host, backups off: {without['makespan']:.3f} s = "
        f"{without['makespan'] / base:.2f}x   "
        f"[{without['results_from_slow']} results from 'slow']"
    )
    print(
        f"  (capacity bound for a throughput-bound job: >= {bound:.2f}x; the ideal "
        f"with this job size: >= {_ideal(n) / _ideal_healthy(n):.2f}x)"
    )


def _ideal(n: int) -> float:
    """Makespan in task units with 4 healthy slots and the slow host's results ignored."""
    return float(-(-n // 4))


def _ideal_healthy(n: int) -> float:
    return float(-(-n // 6))


if __name__ == "__main__":
    main()
