from __future__ import annotations

import asyncio
import threading
from concurrent.futures import CancelledError, Executor, wait

import pytest

from parallelize import ExecutorStats, ThreadExecutor

TIMEOUT = 30.0


def test_is_a_real_executor_with_map_and_context_manager() -> None:
    with ThreadExecutor(4) as executor:
        assert isinstance(executor, Executor)
        assert list(executor.map(lambda x: x * 2, range(10))) == [x * 2 for x in range(10)]
        assert executor.submit(pow, 2, 10).result(TIMEOUT) == 1024
    assert executor.is_shutdown


def test_run_in_executor() -> None:
    executor = ThreadExecutor(2)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, sum, [1, 2, 3])

    assert asyncio.run(main()) == 6
    executor.shutdown()


def test_exception_is_delivered_with_its_traceback() -> None:
    def boom() -> None:
        raise ValueError("bad value")

    with ThreadExecutor(1) as executor:
        future = executor.submit(boom)
        with pytest.raises(ValueError, match="bad value") as info:
            future.result(TIMEOUT)
        assert any(entry.name == "boom" for entry in info.traceback)


def test_uses_at_most_max_workers_threads() -> None:
    # Each task waits for a partner: tasks can only pass in pairs, which
    # proves two run at once; the set of thread ids proves no third thread.
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    seen: set[int] = set()

    def task() -> None:
        seen.add(threading.get_ident())
        barrier.wait()

    with ThreadExecutor(2) as executor:
        futures = [executor.submit(task) for _ in range(6)]
        wait(futures, timeout=TIMEOUT)
        for f in futures:
            f.result(0)
    assert len(seen) == 2


def test_idle_threads_are_reused() -> None:
    with ThreadExecutor(8) as executor:
        for _ in range(20):
            executor.submit(int).result(TIMEOUT)
        assert len(executor._threads) <= 2


def test_submit_after_shutdown_raises_clear_error() -> None:
    executor = ThreadExecutor(1)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        executor.submit(int)


def test_shutdown_wait_finishes_queued_work() -> None:
    gate = threading.Event()
    executor = ThreadExecutor(1)
    first = executor.submit(gate.wait, TIMEOUT)
    queued = [executor.submit(lambda i=i: i) for i in range(5)]
    gate.set()
    executor.shutdown(wait=True)
    assert first.result() is True
    assert [f.result() for f in queued] == list(range(5))


def test_shutdown_cancel_futures_cancels_queued_only() -> None:
    started, gate = threading.Event(), threading.Event()

    def blocker() -> str:
        started.set()
        gate.wait(TIMEOUT)
        return "ran"

    executor = ThreadExecutor(1)
    running = executor.submit(blocker)
    assert started.wait(TIMEOUT)
    queued = [executor.submit(int) for _ in range(3)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    gate.set()
    executor.shutdown(wait=True)  # a second call waits for the running task
    assert running.done()
    assert running.result() == "ran"
    with pytest.raises(CancelledError):
        queued[0].result()


def test_cancel_queued_and_live_tasks_and_shutdown_if_idle() -> None:
    started, gate = threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        gate.wait(TIMEOUT)

    executor = ThreadExecutor(1)
    running = executor.submit(blocker)
    assert started.wait(TIMEOUT)
    queued = [executor.submit(int) for _ in range(4)]
    assert executor.live_tasks == 5
    assert executor.shutdown_if_idle() is False
    assert executor.cancel_queued() == 4
    assert all(f.cancelled() for f in queued)
    assert executor.live_tasks == 1
    gate.set()
    running.result(TIMEOUT)
    assert executor.live_tasks == 0
    assert executor.shutdown_if_idle() is True
    with pytest.raises(RuntimeError):
        executor.submit(int)


def test_stats_counts_and_durations(capsys: pytest.CaptureFixture[str]) -> None:
    executor = ThreadExecutor(2, name="stats-test")
    for i in range(10):
        executor.submit(int, i).result(TIMEOUT)
    failed = executor.submit(int, "not a number")
    assert failed.exception(TIMEOUT) is not None
    stats = executor.stats()
    assert isinstance(stats, ExecutorStats)
    assert (stats.submitted, stats.succeeded, stats.failed, stats.live) == (11, 10, 1, 0)
    assert stats.durations.shape == (11,)
    assert (stats.durations >= 0).all()
    pct = stats.percentiles()
    assert set(pct) == {50.0, 90.0, 95.0, 99.0}
    assert pct[50.0] <= pct[99.0]
    counts, edges = stats.histogram(bins=5)
    assert counts.sum() == 11 and len(edges) == 6
    executor.shutdown(quiet=False)
    out = capsys.readouterr().out
    assert "stats-test: 11 submitted, 10 succeeded, 1 failed" in out
    assert "p50" in out


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_max_workers(bad: object) -> None:
    with pytest.raises(ValueError, match="max_workers must be a positive integer"):
        ThreadExecutor(bad)  # type: ignore[arg-type]
