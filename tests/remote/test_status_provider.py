"""The RemoteExecutor's heartbeat summary shown in progress bars (smart_future status
providers), on the embedded pool (local agents, no SSH)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import cloudpickle
import pytest

import remote._executor as executor_module
import smart_future
from remote import RemoteExecutor, embedded_pool
from remote._heartbeat import HostStatus, PoolStatus, format_summary
from smart_future import _status

# the agents cannot import this module: its functions are pickled by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_provider_summarises_heartbeat_and_is_unregistered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered: list[Callable[[], str | None]] = []
    real = smart_future.register_status_provider

    def spy(provider: Callable[[], str | None]) -> Callable[[], None]:
        registered.append(provider)
        return real(provider)

    monkeypatch.setattr(executor_module, "register_status_provider", spy)
    # An explicit embedded pool: no user pool file can be picked up.
    executor = RemoteExecutor(embedded_pool(2), name="remote")
    try:
        assert len(registered) == 1
        provider = registered[0]
        assert provider in _status._providers.values()
        assert provider() is None  # idle: nothing to show
        futures = [executor.submit(_nap, 0.4) for _ in range(6)]
        started = time.monotonic()
        line = provider()
        while line is None:  # the scheduler publishes its status within a moment
            assert time.monotonic() - started < 20
            time.sleep(0.02)
            line = provider()
        assert line.startswith("remote: ")
        assert "in flight" in line and "pending" in line and "hosts up" in line
        seen = [line]
        while not any(", 2 in flight" in text for text in seen):
            assert time.monotonic() - started < 20 and not any(f.done() for f in futures), seen
            time.sleep(0.05)
            seen.append(provider() or "")
        assert "1/1 hosts up" in seen[-1]
        assert any(text.startswith("remote: 1/1 hosts up") for text in _status.collect_status())
        assert [f.result(timeout=30) for f in futures] == [0.4] * 6
        assert len(registered) == 1  # once per executor, not per call
    finally:
        executor.shutdown()
    assert provider not in _status._providers.values()
    assert provider() is None
    assert not any(text.startswith("remote:") for text in _status.collect_status())


def test_provider_is_quick() -> None:
    executor = RemoteExecutor(embedded_pool(1), name="quick")
    try:
        provider = next(
            p for p in _status._providers.values() if isinstance(p, executor_module._StatusLine)
        )
        future = executor.submit(_nap, 0.3)
        started = time.perf_counter()
        for _ in range(20):
            provider()
        # reads a published snapshot: never waits for the scheduler thread
        assert time.perf_counter() - started < 0.5
        future.result(timeout=30)
    finally:
        executor.shutdown()


def test_format_summary() -> None:
    hosts = tuple(
        HostStatus(
            name=f"h{i}", state=state, slots=4, in_flight=0, done=0, lost=0, p50=None, p95=None
        )
        for i, state in enumerate(["up", "up", "down"])
    )
    status = PoolStatus(
        done=5,
        in_flight=12,
        pending=40,
        succeeded=5,
        failed=0,
        poisoned=0,
        cancelled=0,
        backups_started=0,
        backups_won=0,
        p50=0.8,
        p95=1.5,
        eta=35.2,
        hosts=hosts,
    )
    assert format_summary("remote", status) == (
        "remote: 2/3 hosts up, 12 in flight, 40 pending, p50 800ms, ETA 35s"
    )


def test_published_summary_is_the_status_summary() -> None:
    # The scheduler publishes the line from its counters, without per-host rows: it must
    # say what format_summary says of the full status at the same moment.
    executor = RemoteExecutor(embedded_pool(2), name="same")
    try:
        futures = [executor.submit(_nap, 0.2) for _ in range(6)]
        scheduler = executor._scheduler

        def both() -> tuple[str, str]:
            now = scheduler._clock()
            return scheduler.summary(now), format_summary(scheduler.name, scheduler.status(now))

        while True:  # until one of them has finished (a p50 to show), then compare
            quick, full = scheduler.call(both)
            assert quick == full
            if "p50" in quick or all(f.done() for f in futures):
                break
            time.sleep(0.05)
        assert [f.result(timeout=30) for f in futures] == [0.2] * 6
        assert scheduler.call(both)[0] == scheduler.call(both)[1]
    finally:
        executor.shutdown()


def _thread_cpu_seconds(native_id: int) -> float:
    import os

    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_idle_scheduler_does_not_spin_after_a_burst() -> None:
    # A publish skipped for the rate limit wakes the loop when due; once the work is over
    # that wake-up must be forgotten, or the idle loop spins on a deadline in the past
    # (it did: a whole core).
    executor = RemoteExecutor(embedded_pool(2), name="idle")
    try:
        for _ in range(5):
            assert [f.result(30) for f in [executor.submit(abs, -i) for i in range(200)]] == list(
                range(200)
            )
        native_id = executor._scheduler._thread.native_id
        assert native_id is not None
        before = _thread_cpu_seconds(native_id)
        time.sleep(1.0)  # the interval over which an idle loop must stay (almost) asleep
        assert _thread_cpu_seconds(native_id) - before < 0.3
    finally:
        executor.shutdown()
