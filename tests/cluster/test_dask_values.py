"""How Method.DASK brings values back: left on the workers until read, then gathered in
batches; values of calls awaited or watched by a callback arrive before they complete."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from pathlib import Path
from typing import Any, cast

from engines import TIMEOUT, DaskCluster

import parallelize
from parallelize import Method, SmartFuture, wait_all
from parallelize._cluster._dask import DaskExecutor
from parallelize._cluster._engine_future import UNFETCHED, EngineFuture


def _inner(future: SmartFuture[Any]) -> EngineFuture:
    inner = future.future
    assert isinstance(inner, EngineFuture)
    return inner


def _held(path: str, value: int) -> list[int]:
    """*value* in a list (a fresh object per fetch), once *path* exists."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [value]


def _listed(value: int) -> list[int]:
    return [value]


def test_values_stay_on_the_workers_until_the_first_read_brings_all_finished(
    dask: DaskCluster,
) -> None:
    work = parallelize.parallelize(method=Method.DASK)(_listed)
    futures = [work(i) for i in range(20)]
    concurrent.futures.wait([f.future for f in futures], timeout=TIMEOUT)  # no callbacks
    assert all(f.done() for f in futures)
    assert all(_inner(f).fetched is UNFETCHED for f in futures)
    assert futures[7].result() == [7]
    # The one read brought every finished value with it.
    assert all(_inner(f).fetched is not UNFETCHED for f in futures)
    assert [f.result() for f in futures] == [[i] for i in range(20)]


def test_a_value_read_by_many_threads_at_once_is_fetched_once(dask: DaskCluster) -> None:
    work = parallelize.parallelize(method=Method.DASK)(_listed)
    futures = [work(i) for i in range(10)]
    concurrent.futures.wait([f.future for f in futures], timeout=TIMEOUT)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        reads = list(pool.map(lambda f: f.result(TIMEOUT), futures * 8))
    assert reads == [[i] for i in range(10)] * 8
    # Fetched twice, a value would be two different lists: every read got the same one.
    for i, future in enumerate(futures):
        assert all(read is future.result() for read in reads[i::10])


def test_done_callbacks_read_the_value_without_a_round_trip(
    dask: DaskCluster, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    work = parallelize.parallelize(method=Method.DASK)(_held)
    futures = [work(str(release), i) for i in range(4)]
    seen: dict[int, tuple[bool, list[int]]] = {}
    all_seen = threading.Event()

    def read(future: SmartFuture[list[int]]) -> None:
        here = _inner(future).fetched is not UNFETCHED  # gathered before completing
        index = next(i for i, f in enumerate(futures) if f is future)  # == would wait
        seen[index] = (here, future.result())
        if len(seen) == len(futures):
            all_seen.set()

    for future in futures:
        future.add_done_callback(read)
    release.touch()
    assert all_seen.wait(TIMEOUT)
    assert seen == {i: (True, [i]) for i in range(4)}


def test_await_reads_values_left_on_the_workers_and_those_still_running(
    dask: DaskCluster, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    work = parallelize.parallelize(method=Method.DASK)(_held)
    release.touch()
    finished = [work(str(release), i) for i in range(3)]
    concurrent.futures.wait([f.future for f in finished], timeout=TIMEOUT)
    assert all(_inner(f).fetched is UNFETCHED for f in finished)
    release.unlink()
    running = [work(str(release), i) for i in range(3, 6)]

    async def main() -> list[list[int]]:
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, release.touch)  # let the running ones finish while awaited
        return list(await asyncio.wait_for(asyncio.gather(*finished, *running), timeout=TIMEOUT))

    assert asyncio.run(main()) == [[i] for i in range(6)]


def test_wait_all_then_reading_gives_every_value(dask: DaskCluster) -> None:
    work = parallelize.parallelize(method=Method.DASK)(_listed)
    done = wait_all([work(i) for i in range(30)], timeout=TIMEOUT)
    assert sorted(f.result()[0] for f in done) == list(range(30))


def test_values_not_read_yet_survive_the_executor_closing_its_client(
    dask: DaskCluster,
) -> None:
    executor = DaskExecutor(address=dask.address, backups=False)
    futures = [executor.submit(_listed, i) for i in range(12)]
    concurrent.futures.wait(futures, timeout=TIMEOUT)
    executor.shutdown(wait=True)
    assert executor.client.status == "closed"
    assert [f.result() for f in futures] == [[i] for i in range(12)]


def test_result_with_a_timeout_bounds_the_fetch_of_a_value_left_on_a_worker(
    dask: DaskCluster,
) -> None:
    executor = DaskExecutor(address=dask.address, backups=False)
    try:
        futures = [executor.submit(_listed, i) for i in range(6)]
        concurrent.futures.wait(futures, timeout=TIMEOUT)
        inner = [cast(EngineFuture, f) for f in futures]
        # Another read holds the gather (as a read stuck on a frozen worker would): a read
        # with a timeout gives up within it instead of waiting behind it.
        with executor._fetch_lock:
            started = time.monotonic()
            try:
                futures[0].result(timeout=0.5)
            except TimeoutError:
                pass
            else:
                raise AssertionError("result(timeout=0.5) waited behind another read")
            assert time.monotonic() - started < TIMEOUT
        # Free to go: the batch of unread values comes within the timeout, as without one.
        assert futures[1].result(timeout=TIMEOUT) == [1]
        assert inner[2].fetched is not UNFETCHED
        assert [f.result() for f in futures] == [[i] for i in range(6)]
    finally:
        executor.shutdown()
