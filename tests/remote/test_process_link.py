"""The embedded pool on PROCESS workers (remote/_process_link.py), through RemoteExecutor:
the same failures as PROCESS (REMOTE retrying lost attempts first), large arrays through
shared memory, share() handles, stop() of a running call, and which link a host gets."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
from embedded_calls import WAIT, die, hold_until, mark, pid, wait_for

from parallelize import (
    PicklingError,
    PoisonedCallError,
    ProcessExecutor,
    TaskLostError,
    WorkerDiedError,
    share,
)
from parallelize.ext import pickle_call
from remote import RemoteExecutor
from remote._executor import default_link_factory
from remote._local_link import LocalLink
from remote._pool_config import embedded_pool
from remote._process_link import ProcessLink

pytestmark = pytest.mark.timeout(120)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def double(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return array * 2


def total(array: np.ndarray[Any, Any], offset: int) -> float:
    return float(array.sum()) + offset


def wait_then_sleep(flag: str) -> None:
    Path(flag).write_text(str(os.getpid()))
    time.sleep(60)


@pytest.fixture
def remote() -> Iterator[RemoteExecutor]:
    ex = RemoteExecutor(embedded_pool(2), max_attempts=2, heartbeat_interval=3600)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def test_the_embedded_pool_runs_on_process_workers() -> None:
    spec = embedded_pool(2).hosts[0]
    assert isinstance(default_link_factory(spec), ProcessLink)
    # another interpreter needs a real agent
    other = replace(spec, python="/usr/bin/env")
    assert isinstance(default_link_factory(other), LocalLink)


def test_a_lost_worker_is_retried_then_the_same_family_as_process(
    remote: RemoteExecutor,
) -> None:
    process = ProcessExecutor(1)
    try:
        with pytest.raises(WorkerDiedError) as died:
            process.submit(die).result(WAIT)
    finally:
        process.shutdown()
    with pytest.raises(PoisonedCallError) as poisoned:
        remote.submit(die).result(WAIT)
    assert isinstance(died.value, TaskLostError)
    assert isinstance(poisoned.value, TaskLostError)
    assert len(poisoned.value.attempts) == 2  # max_attempts: retried once
    assert remote.submit(pid).result(WAIT) != os.getpid()  # the pool still serves


def test_unpicklable_argument_fails_at_submit(remote: RemoteExecutor) -> None:
    import threading

    with pytest.raises(PicklingError):
        remote.submit(pid, threading.Lock())  # type: ignore[call-arg]


def test_large_arrays_go_by_shared_memory_both_ways(remote: RemoteExecutor) -> None:
    array = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    call = pickle_call(double, (array,), {}, 1 << 20)
    try:
        assert call.segment is not None  # the buffer is not in the pickle
        assert len(call.args_bytes) < 1 << 16
    finally:
        call.close()
    futures = [remote.submit(double, array) for _ in range(3)]
    for future in futures:
        np.testing.assert_array_equal(future.result(WAIT), array * 2)


def test_shared_handles_reach_the_workers(remote: RemoteExecutor) -> None:
    array = np.ones(1 << 18)
    handle = share(array)
    results = [remote.submit(total, handle, i).result(WAIT) for i in range(3)]
    assert results == [float(array.sum()) + i for i in range(3)]


def test_stop_kills_the_running_call(remote: RemoteExecutor, tmp_path: Path) -> None:
    flag = tmp_path / "started"
    future = remote.submit(wait_then_sleep, str(flag))
    deadline = time.monotonic() + WAIT
    while not flag.exists() or not flag.read_text():
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.01)
    worker = int(flag.read_text())
    assert future.stop()  # type: ignore[attr-defined]
    while True:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, f"worker {worker} still runs"
        time.sleep(0.01)
    assert future.cancelled()


def test_a_pool_mixing_local_and_other_hosts_keeps_agents_for_local_ones() -> None:
    local = embedded_pool(1).hosts[0]
    other = replace(local, name="other", python="/usr/bin/env")  # not on PROCESS workers
    ex = RemoteExecutor([local, other], heartbeat_interval=3600)
    try:
        assert not ex._local_calls
    finally:
        ex.shutdown()
    assert isinstance(default_link_factory(local, process_workers=False), LocalLink)


def fail() -> None:
    raise ValueError("bad input")


def test_a_raised_exception_names_the_host_it_ran_on(remote: RemoteExecutor) -> None:
    from parallelize.ext import where_ran

    with pytest.raises(ValueError, match="bad input") as raised:
        remote.submit(fail).result(WAIT)
    assert where_ran(raised.value) == "local"
    assert "Traceback on host 'local'" in str(raised.value.__cause__)


def _through_the_scheduler(executor: RemoteExecutor) -> RemoteExecutor:
    """Keep every call on the scheduler's path, as in a pool of several local hosts: a
    one-host pool otherwise runs its calls on the direct lane (tests/remote/test_lane.py)."""
    executor._lane = None
    return executor


def _depth(executor: RemoteExecutor) -> int:
    scheduler = executor._scheduler
    return int(scheduler.call(lambda: scheduler._hosts[0].depth))


def test_short_calls_wait_at_the_host_without_running_and_can_be_cancelled(
    tmp_path: Path,
) -> None:
    """Short calls are sent ahead to the workers (prefetched), but a call waiting there
    behind another is not running: a plain cancel() succeeds, and it never runs."""
    executor = _through_the_scheduler(RemoteExecutor(embedded_pool(2), heartbeat_interval=3600))
    try:
        for future in [executor.submit(pid) for _ in range(200)]:
            future.result(WAIT)
        assert _depth(executor) > 1  # short calls: the host queues several per slot
        gate = tmp_path / "gate"
        holders = [executor.submit(hold_until, str(tmp_path / f"h{i}"), str(gate)) for i in (0, 1)]
        wait_for(lambda: all((tmp_path / f"h{i}").exists() for i in (0, 1)), "both slots busy")
        assert all(h.running() for h in holders)
        queued = [executor.submit(mark, str(tmp_path / f"q{i}")) for i in range(6)]
        # sent to the workers (there is room at the host), yet none of them has started
        wait_for(
            lambda: executor._scheduler.call(lambda: len(executor._scheduler._running)) == 8,
            "the queued calls to be sent to the host",
        )
        assert not any(f.running() for f in queued)
        assert queued[0].cancel() and queued[3].cancel()
        assert executor.cancel_queued() == 4  # the other four: also waiting at the host
        gate.write_text("open")
        assert sorted(h.result(WAIT) for h in holders) == sorted(
            int((tmp_path / f"h{i}").read_text()) for i in (0, 1)
        )
        assert all(f.cancelled() for f in queued)
        # the pool is still whole and nothing cancelled ran
        assert [executor.submit(mark, str(tmp_path / "after")).result(WAIT)] == [
            str(tmp_path / "after")
        ]
        assert not any((tmp_path / f"q{i}").exists() for i in range(6))
    finally:
        executor.shutdown()


@contextlib.contextmanager
def _held_then_waiting(
    tmp_path: Path, fn: Any, *args: Any
) -> Iterator[tuple[RemoteExecutor, Future[Any], Future[Any], Path]]:
    """One slot, short calls run first (so the host queues several per slot); then a call
    held in the worker until the yielded gate file exists, and ``fn(*args)`` sent to the
    host behind it."""
    executor = _through_the_scheduler(RemoteExecutor(embedded_pool(1), heartbeat_interval=3600))
    try:
        for future in [executor.submit(pid) for _ in range(200)]:
            future.result(WAIT)
        assert _depth(executor) > 1
        gate = tmp_path / "gate"
        first = executor.submit(hold_until, str(tmp_path / "h0"), str(gate))
        wait_for((tmp_path / "h0").exists, "the first call to start")
        second = executor.submit(fn, *args)
        wait_for(
            lambda: executor._scheduler.call(lambda: len(executor._scheduler._running)) == 2,
            "the second call to be sent to the host",
        )
        yield executor, first, second, gate
    finally:
        executor.shutdown()


def test_a_call_waiting_at_the_host_turns_running_when_it_starts(tmp_path: Path) -> None:
    second_gate = tmp_path / "gate2"
    with _held_then_waiting(tmp_path, hold_until, str(tmp_path / "h1"), str(second_gate)) as (
        _,
        first,
        second,
        gate,
    ):
        assert first.running() and not second.running()
        gate.write_text("open")
        first.result(WAIT)
        wait_for((tmp_path / "h1").exists, "the second call to start")
        assert second.running()  # marked when the worker started it, not before
        second_gate.write_text("open")
        second.result(WAIT)


def test_a_call_that_waited_at_the_host_is_recorded_from_when_it_ran(tmp_path: Path) -> None:
    """A prefetched call waits at the host behind another before it runs: its attempt
    record (timeline, host speed) starts when it ran, not when it was sent."""
    with _held_then_waiting(tmp_path, pid) as (executor, first, second, gate):
        waited = threading.Event().wait(1.0)  # the second call waits there, not running
        assert not waited and not second.running()
        gate.write_text("open")
        first.result(WAIT)
        second.result(WAIT)
        rows = sorted(executor.stats().attempts, key=lambda r: r.end or 0.0)
        last = rows[-1]  # the second call's attempt: it ended last
        assert last.end is not None
        assert last.end - last.start < 0.5, last  # it ran for microseconds, waited for 1 s
