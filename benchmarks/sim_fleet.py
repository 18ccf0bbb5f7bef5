"""A simulated fleet for the scheduler: links that follow the HostLink contract and
complete every attempt at once, with no process or network, so that what is measured is
the scheduler itself (dispatch, bookkeeping, status) as the pool grows.

    .venv/bin/python benchmarks/sim_fleet.py 2x2 100x8 1000x8 10000x8
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from remote import RemoteExecutor
from remote._link import HostSpec, LinkEvents

_NONE = pickle.dumps(None)


class SimLink:
    """Connects at once; every submitted attempt returns None at once."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self._events: LinkEvents | None = None

    def connect(self, events: LinkEvents) -> None:
        self._events = events

    def submit(self, attempt_id: int, fn_id: int, fn_payload: bytes, args_payload: bytes) -> None:
        events = self._events
        assert events is not None
        events.on_result(self, attempt_id, True, _NONE, 0.0)

    def cancel(self, attempt_id: int) -> None:
        pass

    def close(self) -> None:
        self._events = None

    @property
    def alive(self) -> bool:
        return self._events is not None


def noop() -> None:
    return None


def fleet(hosts: int, slots: int, **options: Any) -> RemoteExecutor:
    specs = [HostSpec(name=f"sim{i}", host=f"sim{i}", slots=slots) for i in range(hosts)]
    options.setdefault("heartbeat_interval", 3600.0)
    return RemoteExecutor(specs, link_factory=SimLink, **options)


def connect(executor: RemoteExecutor) -> None:
    """Every host up (connections are made lazily, in parallel, on first use)."""
    executor.submit(noop).result(120)
    deadline = time.monotonic() + 120
    scheduler = executor._scheduler
    while not scheduler.call(lambda: all(h.state.value == "up" for h in scheduler._hosts)):
        assert time.monotonic() < deadline, "the simulated fleet did not come up"
        time.sleep(0.01)


def calls_per_second(executor: RemoteExecutor, calls: int) -> float:
    start = time.perf_counter()
    futures = [executor.submit(noop) for _ in range(calls)]
    for future in futures:
        future.result(600)
    return calls / (time.perf_counter() - start)


def status_seconds(executor: RemoteExecutor) -> float:
    scheduler = executor._scheduler
    times = []
    for _ in range(5):
        start = time.perf_counter()
        scheduler.call(scheduler.status)
        times.append(time.perf_counter() - start)
    return sorted(times)[2]


def main(argv: list[str]) -> None:
    for shape in argv or ["2x2", "100x8", "1000x8"]:
        hosts, slots = (int(part) for part in shape.split("x"))
        executor = fleet(hosts, slots)
        try:
            connect(executor)
            calls_per_second(executor, 2_000)  # warm
            rate = calls_per_second(executor, 20_000)
            print(
                f"{shape:>8}: {rate:8.0f} calls/s, status() {status_seconds(executor) * 1e3:.1f} ms"
            )
        finally:
            executor.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
