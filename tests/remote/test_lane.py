"""The direct lane of a one-host embedded pool (remote/_lane.py): calls skip the scheduler
thread, yet keep REMOTE's semantics -- retries of lost attempts ending in a poisoned-call
error, per-call timeouts, cancel and stop, stats and timeline rows that include a call as
soon as its result is seen, shutdown that waits for (or cancels) what is in the pool, and
exit that runs every call once."""

from __future__ import annotations

import gc
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
from embedded_calls import WAIT, die, hold_until, mark, pid, wait_for

from parallelize import PoisonedCallError, TaskLostError, TaskTimeoutError
from parallelize.ext import CallOptions
from remote import RemoteExecutor
from remote._lane import LaneFuture
from remote._pool_config import embedded_pool

pytestmark = pytest.mark.timeout(120)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def die_once(marker: str) -> int:
    """Kill the worker the first time (leaving *marker*), return the pid the second."""
    if not os.path.exists(marker):
        Path(marker).write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def die_once_then_sum(marker: str, array: np.ndarray[Any, Any]) -> float:
    if not os.path.exists(marker):
        Path(marker).write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return float(array.sum())


def fail(message: str) -> None:
    raise ValueError(message)


def _with_open_lane(slots: int, **options: Any) -> RemoteExecutor:
    executor = RemoteExecutor(embedded_pool(slots), heartbeat_interval=3600, **options)
    executor.submit(pid).result(WAIT)  # the host is up once a call has run
    lane = executor._lane
    assert lane is not None, "a one-host embedded pool has a lane"
    wait_for(lambda: lane.is_open, "the lane to open")
    return executor


@pytest.fixture
def remote() -> Iterator[RemoteExecutor]:
    executor = _with_open_lane(2, max_attempts=2)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def _held(executor: RemoteExecutor, tmp_path: Path, name: str) -> tuple[Future[Any], Path]:
    gate = tmp_path / f"{name}.gate"
    started = tmp_path / f"{name}.started"
    future = executor.submit(hold_until, str(started), str(gate))
    wait_for(started.exists, f"{name} to start")
    return future, gate


def _status(executor: RemoteExecutor) -> Any:
    scheduler = executor._scheduler
    return scheduler.call(scheduler.status)


def test_calls_take_the_lane_and_are_booked_as_they_finish(
    remote: RemoteExecutor, tmp_path: Path
) -> None:
    before = remote.stats()
    held, gate = _held(remote, tmp_path, "held")
    assert isinstance(held, LaneFuture)
    assert held.lane is not None and held.bundle is None  # not the scheduler's
    assert held.running()
    assert _status(remote).in_flight == 1
    gate.write_text("open")
    results = [remote.submit(pid) for _ in range(300)]
    pids = {f.result(WAIT) for f in results}
    assert os.getpid() not in pids and len(pids) <= 2
    # a finished call's future keeps its value, not its pickled call
    assert all(isinstance(f, LaneFuture) and f.call is None for f in results)
    assert held.result(WAIT) != os.getpid()
    after = remote.stats()
    assert after.succeeded - before.succeeded == 301
    assert after.submitted - before.submitted == 301
    assert len(after.attempts) - len(before.attempts) == 301
    status = _status(remote)
    assert status.in_flight == 0 and status.succeeded == after.succeeded
    assert status.hosts[0].done == after.succeeded
    # rows of the timeline: the pool's two slots, never two calls at once on one
    rows: dict[str, list[tuple[float, float]]] = {}
    for row in after.attempts:
        assert row.outcome == "won" and row.end is not None
        rows.setdefault(row.slot, []).append((row.start, row.end))
    assert len(rows) <= 2
    for spans in rows.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 1e-6


def test_stats_include_a_call_as_soon_as_its_result_is_seen(remote: RemoteExecutor) -> None:
    base = remote.stats()
    for i in range(1, 31):
        future = remote.submit(fail, "bad") if i % 3 == 0 else remote.submit(pid)
        future.exception(WAIT)
        stats = remote.stats()
        assert stats.succeeded + stats.failed - base.succeeded - base.failed == i
        assert len(stats.attempts) - len(base.attempts) == i
    assert remote.stats().failed - base.failed == 10


def test_the_call_s_own_error_arrives_with_its_type_and_is_not_retried(
    remote: RemoteExecutor,
) -> None:
    with pytest.raises(ValueError, match="bad input"):
        remote.submit(fail, "bad input").result(WAIT)
    rows = remote.stats().attempts
    assert [r.outcome for r in rows if r.bundle == rows[-1].bundle] == ["won"]


def test_a_worker_lost_on_the_lane_is_retried_by_the_scheduler(
    remote: RemoteExecutor, tmp_path: Path
) -> None:
    marker = tmp_path / "died"
    future = remote.submit(die_once, str(marker))
    assert future.result(WAIT) != os.getpid()
    assert marker.exists()
    rows = [r for r in remote.stats().attempts if r.reason or r.outcome != "won"]
    assert [r.outcome for r in rows] == ["lost"]
    assert remote.submit(pid).result(WAIT) != os.getpid()  # the pool still serves
    assert remote._lane is not None
    wait_for(lambda: remote._lane is not None and remote._lane.is_open, "the lane again")


def test_a_retried_lane_call_still_has_its_shared_memory_arguments(
    remote: RemoteExecutor, tmp_path: Path
) -> None:
    array = np.arange(1 << 20, dtype=np.float64)  # 8 MiB: by shared memory, not in the pickle
    future = remote.submit(die_once_then_sum, str(tmp_path / "died"), array)
    assert future.result(WAIT) == float(array.sum())
    assert [r.outcome for r in remote.stats().attempts if r.outcome != "won"] == ["lost"]


def test_a_call_that_kills_every_worker_is_poisoned_naming_each_attempt(
    remote: RemoteExecutor,
) -> None:
    others = [remote.submit(pid) for _ in range(20)]
    with pytest.raises(PoisonedCallError) as poisoned:
        remote.submit(die).result(WAIT)
    assert isinstance(poisoned.value, TaskLostError)
    attempts = poisoned.value.attempts
    assert len(attempts) == 2  # max_attempts
    assert all(a.host == "local" for a in attempts)
    assert all(f.result(WAIT) != os.getpid() for f in others)
    assert remote.stats().extra["poisoned"] == 1


def test_a_timeout_on_the_lane_fails_the_call_without_a_retry(remote: RemoteExecutor) -> None:
    future = remote.submit_with(CallOptions(timeout=0.5), time.sleep, 60)
    with pytest.raises(TaskTimeoutError):
        future.result(WAIT)
    rows = [r for r in remote.stats().attempts if r.outcome != "won"]
    assert [r.outcome for r in rows] == ["timed_out"]
    assert remote.submit(pid).result(WAIT) != os.getpid()


def test_a_call_waiting_in_the_pool_can_be_cancelled_and_never_runs(tmp_path: Path) -> None:
    executor = _with_open_lane(1)
    try:
        held, gate = _held(executor, tmp_path, "held")
        queued = [executor.submit(mark, str(tmp_path / f"q{i}")) for i in range(4)]
        assert not any(f.running() for f in queued)
        assert queued[1].cancel()
        assert queued[1].cancel()  # twice: counted once
        gate.write_text("open")
        held.result(WAIT)
        assert [f.result(WAIT) for f in (queued[0], queued[2], queued[3])] == [
            str(tmp_path / f"q{i}") for i in (0, 2, 3)
        ]
        assert queued[1].cancelled() and not (tmp_path / "q1").exists()
        stats = executor.stats()
        assert stats.cancelled == 1
        assert stats.extra["cancelled"] == 1
    finally:
        executor.shutdown()


def test_stop_kills_a_running_lane_call(remote: RemoteExecutor, tmp_path: Path) -> None:
    future, _ = _held(remote, tmp_path, "held")
    worker = int((tmp_path / "held.started").read_text())
    assert future.stop()  # type: ignore[attr-defined]
    assert future.cancelled()

    def gone() -> bool:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, f"worker {worker} to be killed")
    assert remote.submit(pid).result(WAIT) != worker
    assert remote.stats().cancelled == 1


def test_shutdown_waits_for_the_calls_in_the_pool() -> None:
    executor = _with_open_lane(2)
    futures = [executor.submit(time.sleep, 0.01) for _ in range(100)]
    executor.shutdown(wait=True)
    assert all(f.done() and f.exception() is None for f in futures)


def test_shutdown_cancel_futures_cancels_lane_calls_still_in_the_pool(tmp_path: Path) -> None:
    executor = _with_open_lane(1)
    held, gate = _held(executor, tmp_path, "held")
    queued = [executor.submit(mark, str(tmp_path / f"q{i}")) for i in range(5)]
    executor.shutdown(wait=False, cancel_futures=True)
    gate.write_text("open")
    assert held.result(WAIT) != os.getpid()
    assert all(f.cancelled() for f in queued)
    executor.shutdown(wait=True)
    assert not any((tmp_path / f"q{i}").exists() for i in range(5))


def test_calls_left_on_the_lane_at_exit_run_once(tmp_path: Path) -> None:
    out = tmp_path / "ran"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from remote import RemoteExecutor
        from remote._pool_config import embedded_pool

        def record(i):
            time.sleep(0.002)
            fd = os.open({str(out)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"{{i}}\\n".encode())
            os.close(fd)

        ex = RemoteExecutor(embedded_pool(2), heartbeat_interval=3600)
        ex.submit(os.getpid).result(60)
        while not ex._lane.is_open:
            time.sleep(0.01)
        futures = [ex.submit(record, i) for i in range(300)]
        # no shutdown, no wait: the interpreter exits with the calls in the pool
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 0, done.stderr
    lines = out.read_text().split()
    assert sorted(map(int, lines)) == list(range(300))


def test_a_finished_lane_future_is_freed_without_the_cyclic_gc(remote: RemoteExecutor) -> None:
    gc.disable()
    try:
        future = remote.submit(pid)
        assert isinstance(future, LaneFuture)
        future.result(WAIT)
        ref = weakref.ref(future)
        del future
        wait_for(lambda: ref() is None, "the future to be freed by reference counting")
    finally:
        gc.enable()
