"""A frozen Dask worker (SIGSTOP) stalls only the calls whose values or runs it holds.

Its own cluster (a scheduler and two one-thread workers), since a frozen worker would
disturb the session's: worker A is frozen holding a finished value and running a call;
B carries on. SIGCONT in teardown, whatever happened."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from engines import TIMEOUT, DaskCluster, wait_until

from parallelize._cluster._dask import DaskExecutor
from parallelize._cluster._engine_future import UNFETCHED, EngineFuture


def _listed(value: int) -> list[int]:
    return [value]


def _blocked(path: str) -> str:
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "ran"


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    pytest.importorskip("distributed")
    cluster = DaskCluster(tmp_path_factory.mktemp("dask-frozen"), 2).start()
    try:
        yield cluster
    finally:
        cluster.stop()
    assert cluster.alive() == [], "dask processes left running"


class _Frozen:
    """SIGSTOP a worker process; SIGCONT it on exit, whatever happened."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> _Frozen:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *_: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


def test_a_frozen_worker_stalls_only_the_calls_it_holds(
    two_workers: DaskCluster, tmp_path: Path
) -> None:
    executor = DaskExecutor(address=two_workers.address, backups=False)
    client = executor.client
    release_a, release_b = tmp_path / "release-a", tmp_path / "release-b"
    try:
        pids: dict[str, int] = client.run(os.getpid)
        a, b = sorted(pids)
        # B busy with a task of our own: the next call goes to A (one task per worker
        # thread: the cluster runs with worker-saturation 1.0).
        hold_b = client.submit(_blocked, str(release_b), workers=[b], pure=False)
        wait_until(lambda: hold_b.key in client.processing().get(b, ()), "B to be busy")
        held = cast(EngineFuture, executor.submit(_listed, 7))
        assert held.exception(TIMEOUT) is None and held.fetched is UNFETCHED
        assert list(client.who_has(held.engine_future)[held.engine_future.key]) == [a]
        # A runs a call someone waits on with a callback (its value would be prefetched).
        running = cast(EngineFuture, executor.submit(_blocked, str(release_a)))
        running.add_done_callback(lambda _: None)
        key = running.engine_future.key
        wait_until(lambda: key in client.processing().get(a, ()), "the call to run on A")

        with _Frozen(pids[a]):
            release_b.touch()
            assert hold_b.result(TIMEOUT) == "ran"
            # Other calls run on B and complete, their values prefetched (callbacks) or
            # left on B: a frozen worker stalls no completion. One at a time: Dask gives a
            # call without dependencies to an idle worker, B (A's thread is taken).
            watched: list[EngineFuture] = []
            for i in range(8):
                watched.append(cast(EngineFuture, executor.submit(_listed, i)))
                watched[-1].add_done_callback(lambda _: None)
                assert watched[-1].exception(TIMEOUT) is None
            unread = cast(EngineFuture, executor.submit(_listed, 99))
            assert unread.exception(TIMEOUT) is None
            assert all(f.fetched is not UNFETCHED for f in watched)
            assert [f.result(TIMEOUT) for f in watched] == [[i] for i in range(8)]
            # A read without a timeout gathers every unread value, held's on A too: it
            # gives up on that batch and brings its own value alone.
            read: list[Any] = []
            reader = threading.Thread(target=lambda: read.append(unread.result()), daemon=True)
            reader.start()
            reader.join(TIMEOUT)
            assert read == [[99]]
            # The calls A holds: result(timeout) gives up within it, it does not hang.
            for future in (held, running):
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    future.result(timeout=0.5)
                assert time.monotonic() - started < TIMEOUT
        release_a.touch()
        assert held.result(TIMEOUT) == [7]
        assert running.result(TIMEOUT) == "ran"
    finally:
        release_a.touch()
        release_b.touch()
        executor.shutdown()


def test_a_prefetch_waiting_on_a_frozen_worker_completes_the_others_of_its_batch(
    two_workers: DaskCluster, tmp_path: Path
) -> None:
    """The prefetch path itself, on a batch of two finished values, one on a frozen worker:
    the other completes once the batch gather ran out of patience; the frozen one stays
    pending (``result(timeout)`` raises TimeoutError) and completes once its worker wakes."""
    executor = DaskExecutor(address=two_workers.address, backups=False)
    client = executor.client
    release_b = tmp_path / "release-b"
    try:
        pids: dict[str, int] = client.run(os.getpid)
        a, b = sorted(pids)
        on_a = client.submit(_listed, 1, workers=[a], pure=False)
        on_b = client.submit(_listed, 2, workers=[b], pure=False)
        assert on_a.result(TIMEOUT) == [1] and on_b.result(TIMEOUT) == [2]
        # Pending futures of finished calls, as the completion thread hands to _prefetch.
        frozen = EngineFuture(executor, -1, on_a)
        fine = EngineFuture(executor, -2, on_b)
        with _Frozen(pids[a]):
            executor._prefetch([frozen, fine])
            assert fine.result(TIMEOUT) == [2]
            with pytest.raises(TimeoutError):
                frozen.result(timeout=0.5)
            assert not frozen.done()
        assert frozen.result(TIMEOUT) == [1]
    finally:
        release_b.touch()
        executor.shutdown()
