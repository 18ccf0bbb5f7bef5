"""Quick measurements of ProcessExecutor against concurrent.futures.ProcessPoolExecutor.

Run: ``.venv/bin/python benchmarks/bench_process_pool.py [--workers 2] [--repeat 5]``.
Both pools run in this process, warmed up first; medians of several repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, wait
from functools import partial

from parallelize._process import ProcessExecutor


def noop() -> None:
    return None


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def calibrate(seconds: float) -> int:
    n = 100_000
    while True:
        started = time.perf_counter()
        spin(n)
        took = time.perf_counter() - started
        if took > 0.01:
            return int(n * seconds / took)
        n *= 2


def many_noops(executor: Executor, count: int) -> float:
    started = time.perf_counter()
    futures = [executor.submit(noop) for _ in range(count)]
    wait(futures)
    for future in futures:
        future.result()
    return time.perf_counter() - started


def round_trips(executor: Executor, count: int) -> float:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        executor.submit(noop).result()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def cpu_bound(executor: Executor, n: int, tasks: int) -> float:
    started = time.perf_counter()
    for future in [executor.submit(spin, n) for _ in range(tasks)]:
        future.result()
    return time.perf_counter() - started


def median_of(repeat: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()

    n = calibrate(0.05)
    started = time.perf_counter()
    for _ in range(16):
        spin(n)
    sequential = time.perf_counter() - started

    ours = ProcessExecutor(args.workers)
    stdlib = ProcessPoolExecutor(args.workers)
    results: dict[str, dict[str, float]] = {}
    try:
        for executor in (ours, stdlib):
            many_noops(executor, 1000)  # warm up: start workers, ship functions
            round_trips(executor, 20)
        for name, executor in (("ours", ours), ("stdlib", stdlib)):
            results[name] = {
                "noops": median_of(args.repeat, partial(many_noops, executor, args.tasks)),
                "round_trip": median_of(args.repeat, partial(round_trips, executor, 200)),
                "cpu": median_of(args.repeat, partial(cpu_bound, executor, n, 16)),
            }
    finally:
        ours.shutdown()
        stdlib.shutdown()

    o, s = results["ours"], results["stdlib"]
    print(
        f"{args.tasks} no-op submit+wait: ours {o['noops'] * 1e3:.0f} ms "
        f"({o['noops'] / args.tasks * 1e6:.1f} us/task), stdlib {s['noops'] * 1e3:.0f} ms "
        f"({s['noops'] / args.tasks * 1e6:.1f} us/task) -> {s['noops'] / o['noops']:.2f}x faster"
    )
    print(
        f"single round trip median: ours {o['round_trip'] * 1e6:.0f} us, stdlib "
        f"{s['round_trip'] * 1e6:.0f} us -> {s['round_trip'] / o['round_trip']:.2f}x faster"
    )
    print(
        f"16 x 50 ms CPU on {args.workers} workers: sequential {sequential * 1e3:.0f} ms, "
        f"ours {o['cpu'] * 1e3:.0f} ms ({sequential / o['cpu']:.2f}x speed-up), stdlib "
        f"{s['cpu'] * 1e3:.0f} ms ({sequential / s['cpu']:.2f}x speed-up)"
    )


if __name__ == "__main__":
    main()
