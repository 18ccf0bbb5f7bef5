"""The demo behind ``python -m parallelize``: real work, timed, sequential vs parallel."""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from smart_future import wait_all

from ._decorator import parallelize
from ._defaults import default_executor, shutdown_default_executors
from ._method import Method


def fetch_page(url: str) -> int:
    """Stand-in for I/O: parse a URL and wait as a network call would."""
    time.sleep(0.2)
    return len(urllib.parse.urlparse(url).netloc)


def count_primes(limit: int) -> int:
    """Pure-Python CPU work: count the primes below *limit*."""
    count = 0
    for n in range(2, limit):
        for d in range(2, int(n**0.5) + 1):
            if n % d == 0:
                break
        else:
            count += 1
    return count


def _timed(label: str, run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = run()
    elapsed = time.perf_counter() - start
    print(f"  {label:<34} {elapsed:7.2f} s")
    return elapsed, value


def _section(title: str, sequential: Callable[[], Any], parallel: Callable[[], Any]) -> None:
    print(title)
    seq_time, seq_value = _timed("sequential", sequential)
    par_time, par_value = _timed("@parallelize", parallel)
    assert seq_value == par_value, (seq_value, par_value)
    print(f"  same result, {seq_time / par_time:.1f}x faster\n")


def main() -> int:
    cpus = os.cpu_count() or 1
    print(f"parallelize demo on {cpus} CPU(s)\n")

    urls = [f"https://example{i}.org/data.csv" for i in range(16)]
    fetch = parallelize(fetch_page)  # THREAD: for I/O and code that releases the GIL
    _section(
        "THREAD: 16 I/O-bound calls of 0.2 s each",
        lambda: [fetch_page(u) for u in urls],
        lambda: [int(v) for v in wait_all([fetch(u) for u in urls])],
    )

    limits = [200_000] * (4 * cpus)
    primes = parallelize(method=Method.PROCESS)(count_primes)
    primes(10).result()  # start the worker processes before timing
    _section(
        f"PROCESS: {len(limits)} CPU-bound calls (count primes) on {cpus} processes",
        lambda: [count_primes(n) for n in limits],
        lambda: [p.result() for p in [primes(n) for n in limits]],
    )

    try:
        remote_primes = parallelize(method=Method.REMOTE)(count_primes)
        executor = default_executor(Method.REMOTE)
    except NotImplementedError as exc:
        print(f"REMOTE: skipped ({exc})")
    else:
        remote_primes(10).result()
        hosts = getattr(executor, "hosts", [])
        where = ", ".join(f"{h.name} ({h.slots} slots)" for h in hosts) or repr(executor)
        if any(getattr(h, "is_local", False) for h in hosts):
            where += ": the embedded local pool, as no pool file is configured"
        _section(
            f"REMOTE: {len(limits)} CPU-bound calls on {where}",
            lambda: [count_primes(n) for n in limits],
            lambda: [p.result() for p in [remote_primes(n) for n in limits]],
        )
    shutdown_default_executors()
    return 0
