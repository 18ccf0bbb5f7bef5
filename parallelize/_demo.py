"""The demo behind ``python -m parallelize``: real work, timed, sequential vs parallel."""

from __future__ import annotations

import os
import statistics
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from smart_future import wait_all

from ._decorator import parallelize
from ._defaults import default_executor, shutdown_default_executors
from ._method import Method

_PRIMES_LIMIT = 120_000  # about 0.2 s of pure-Python work per call


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


def _time(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def _section(
    title: str, sequential: Callable[[], Any], parallel: Callable[[], Any], rounds: int = 1
) -> None:
    """Time both ways in interleaved rounds and report the medians.

    The machine may be shared: interleaving exposes both ways to the same load,
    and the median of the rounds ignores one disturbed round.
    """
    print(title)
    seq_times: list[float] = []
    par_times: list[float] = []
    for _ in range(rounds):
        seq_time, seq_value = _time(sequential)
        par_time, par_value = _time(parallel)
        assert seq_value == par_value, (seq_value, par_value)
        seq_times.append(seq_time)
        par_times.append(par_time)
    seq, par = statistics.median(seq_times), statistics.median(par_times)
    how = f"median of {rounds} interleaved rounds" if rounds > 1 else "one round"
    print(f"  one after another in this process   {seq:7.2f} s")
    print(f"  through @parallelize                {par:7.2f} s")
    if seq >= par:
        print(f"  same results, {seq / par:.1f}x faster ({how})\n")
    else:  # a machine busy with other work: say so rather than print "0.5x faster"
        print(
            f"  same results, {par / seq:.1f}x SLOWER ({how}): the CPUs are busy with other "
            "programs, so the workers got no CPU of their own\n"
        )


def _warm(call: Callable[[int], Any], count: int) -> None:
    """Start every worker (or slot) before timing: one concurrent call each."""
    for future in [call(10) for _ in range(count)]:
        future.result()


def _load_note(cpus: int) -> str:
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        return ""
    if load < 0.5:
        return ""
    return (
        f" (load average {load:.1f} on {cpus} CPU(s): other programs compete for them, "
        "so speed-ups are smaller than on an idle machine)"
    )


def main() -> int:
    cpus = os.cpu_count() or 1
    print(f"parallelize demo on {cpus} CPU(s){_load_note(cpus)}\n")

    urls = [f"https://example{i}.org/data.csv" for i in range(16)]
    fetch = parallelize(fetch_page)  # THREAD: for I/O and code that releases the GIL
    _section(
        "THREAD: 16 I/O-bound calls of 0.2 s each",
        lambda: [fetch_page(u) for u in urls],
        lambda: [int(v) for v in wait_all([fetch(u) for u in urls])],
    )

    limits = [_PRIMES_LIMIT] * (4 * cpus)
    primes = parallelize(method=Method.PROCESS)(count_primes)
    _warm(primes, cpus)
    _section(
        f"PROCESS: {len(limits)} CPU-bound calls (count primes below {_PRIMES_LIMIT:,}) "
        f"on {cpus} worker processes",
        lambda: [count_primes(n) for n in limits],
        lambda: [p.result() for p in [primes(n) for n in limits]],
        rounds=3,
    )

    try:
        remote_primes = parallelize(method=Method.REMOTE)(count_primes)
        executor = default_executor(Method.REMOTE)
    except NotImplementedError as exc:
        print(f"REMOTE: skipped ({exc})")
    else:
        hosts = getattr(executor, "hosts", [])
        slots = sum(getattr(h, "slots", 1) for h in hosts) or cpus
        _warm(remote_primes, slots)
        where = ", ".join(f"{h.name} ({h.slots} slots)" for h in hosts) or repr(executor)
        if any(getattr(h, "is_local", False) for h in hosts):
            where += ": the embedded local pool, as no pool file is configured"
        _section(
            f"REMOTE: {len(limits)} CPU-bound calls on {where}",
            lambda: [count_primes(n) for n in limits],
            lambda: [p.result() for p in [remote_primes(n) for n in limits]],
            rounds=3,
        )
    shutdown_default_executors()
    return 0
