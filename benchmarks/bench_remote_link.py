"""Measure the REMOTE transport on loopback sshd servers (standalone script).

    .venv/bin/python benchmarks/bench_remote_link.py [--calls 20000] [--window 8]

Starts two test sshd servers (tests/remote/sshd.py; needs /usr/sbin/sshd and root or
a user that can run sshd), then prints:
- connect time of an SSHLink (TCP + SSH handshake + agent start + HELLO);
- PING/PONG and no-op call round trips over one SSHLink (median, p90, p99);
- no-op throughput over 2 hosts x 2 slots (each link kept *window* attempts in flight);
- the same round trip over a LocalLink for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "remote")]

import cloudpickle  # noqa: E402
from sshd import EventRecorder, SshdPool  # noqa: E402

from remote._agent_client import AgentLink  # noqa: E402
from remote._local_link import LocalLink  # noqa: E402
from remote._pool_config import embedded_pool  # noqa: E402
from remote._ssh_link import SSHLink  # noqa: E402


def noop() -> None:
    return None


FN = cloudpickle.dumps(noop)
ARGS = cloudpickle.dumps(((), {}))


def pct(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(q / 100 * len(data)))]


def round_trips(link: AgentLink, events: EventRecorder, n: int, start: int) -> list[float]:
    times = []
    for attempt in range(start, start + n):
        began = time.perf_counter()
        link.submit(attempt, 1, FN, ARGS)
        events.wait(lambda a=attempt: a in events.results)
        times.append(time.perf_counter() - began)
    return times


def show(label: str, times: list[float]) -> None:
    print(
        f"{label:<34} median {statistics.median(times) * 1e3:7.3f} ms   "
        f"p90 {pct(times, 90) * 1e3:7.3f} ms   p99 {pct(times, 99) * 1e3:7.3f} ms"
    )


def throughput(links: list[tuple[AgentLink, EventRecorder]], calls: int, window: int) -> float:
    per_link = calls // len(links)

    def drive(index: int, link: AgentLink, events: EventRecorder) -> None:
        base = 1_000_000 * (index + 1)
        sent = 0
        while sent < per_link:
            done = len(events.results)
            while sent < per_link and sent - done < window:
                link.submit(base + sent, 1, FN, ARGS)
                sent += 1
            events.wait(lambda d=done: len(events.results) > d)
        events.wait(lambda: len(events.results) >= per_link, timeout=120)

    for _, events in links:
        events.results.clear()
    threads = [
        threading.Thread(target=drive, args=(i, link, events))
        for i, (link, events) in enumerate(links)
    ]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return per_link * len(links) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--round-trips", type=int, default=2000)
    options = parser.parse_args()
    pool = SshdPool(Path(tempfile.mkdtemp(prefix="bench-sshd-")))
    links: list[tuple[AgentLink, EventRecorder]] = []
    try:
        specs = pool.specs(2, slots=2)
        for spec in specs:
            events = EventRecorder()
            link = SSHLink(spec, on_stderr=None)
            began = time.perf_counter()
            link.connect(events)
            print(
                f"SSHLink connect to {spec.name:<15} {(time.perf_counter() - began) * 1e3:8.1f} ms"
            )
            links.append((link, events))
        link, events = links[0]
        round_trips(link, events, 200, 1)  # warm up
        show("SSHLink PING/PONG", [link.ping() for _ in range(options.round_trips)])
        show(
            "SSHLink no-op call round trip", round_trips(link, events, options.round_trips, 10_000)
        )
        rate = throughput(links, options.calls, options.window)
        print(
            f"SSHLink throughput 2 hosts x 2 slots {rate:10.0f} calls/s "
            f"({options.calls} no-op calls, window {options.window} per link)"
        )
        local_events = EventRecorder()
        local = LocalLink(embedded_pool(2).hosts[0], on_stderr=None)
        local.connect(local_events)
        round_trips(local, local_events, 200, 1)
        show(
            "LocalLink no-op call round trip",
            round_trips(local, local_events, options.round_trips, 10_000),
        )
        local.close()
    finally:
        for link, _ in links:
            link.close()
        pool.stop_all()


if __name__ == "__main__":
    main()
