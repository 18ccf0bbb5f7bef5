"""Method.DASK on a real Dask cluster (a scheduler and two workers on loopback)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from engines import TIMEOUT, DaskCluster

import parallelize
from parallelize import Method, PoisonedCallError, SmartFuture, wait_all, wait_any
from parallelize._cluster._engine_future import UNFETCHED, EngineFuture


def _worker_name() -> str:
    from distributed import get_worker

    return str(get_worker().name)


def _wait_until(condition: Any, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _executor() -> Any:
    return parallelize.default_executor(Method.DASK)


def test_every_keyword_reaches_the_function_and_calls_are_never_deduplicated(
    dask: DaskCluster,
) -> None:
    @parallelize.parallelize(method=Method.DASK)
    def echo(x: int, **kwargs: Any) -> tuple[int, dict[str, Any], str]:
        return x, kwargs, uuid.uuid4().hex

    names = {"key": "k", "workers": "w", "priority": 5, "retries": 7, "pure": True}
    first, second = echo(1, **names), echo(1, **names)
    assert isinstance(first, SmartFuture)
    assert first.result(TIMEOUT)[:2] == (1, names)
    # Identical calls run twice: the random token differs.
    assert first.result()[2] != second.result(TIMEOUT)[2]


def test_smart_future_wraps_the_dask_future(dask: DaskCluster) -> None:
    from distributed import Future as DaskFuture

    @parallelize.parallelize(method=Method.DASK)
    def square(x: int) -> int:
        return x * x

    future = square(7)
    assert isinstance(future.future, EngineFuture)
    assert isinstance(future.future.engine_future, DaskFuture)
    assert future + 1 == 50


def test_chained_calls_keep_the_value_in_the_cluster(dask: DaskCluster) -> None:
    @parallelize.parallelize(method=Method.DASK)
    def make(n: int) -> list[int]:
        return list(range(n))

    @parallelize.parallelize(method=Method.DASK)
    def total(values: list[int], *, weights: list[int]) -> int:
        return sum(v * w for v, w in zip(values, weights, strict=True))

    produced = make(1000)
    inner = produced.future
    assert isinstance(inner, EngineFuture)
    result = total(produced, weights=produced)  # positional and keyword
    assert result.result(TIMEOUT) == sum(i * i for i in range(1000))
    # The producer's value was handed worker to worker: never fetched by this process.
    assert inner.fetched is UNFETCHED
    assert produced.result() == list(range(1000))


def test_cancel_cancels_on_the_engine(dask: DaskCluster, tmp_path: Path) -> None:
    release = tmp_path / "release"

    @parallelize.parallelize(method=Method.DASK)
    def blocked(path: str) -> str:
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        return "ran"

    running = [blocked(str(release)) for _ in range(2)]  # occupy both workers
    queued = blocked(str(release))
    engine = queued.future.engine_future
    try:
        assert queued.cancel()
        assert queued.cancelled()
        _wait_until(lambda: engine.status == "cancelled", "the Dask task to be cancelled")
    finally:
        release.touch()
    assert [f.result(TIMEOUT) for f in running] == ["ran", "ran"]
    stats = _executor().stats()
    assert stats.cancelled == 1 and stats.succeeded == 2


def test_wait_any_wait_all_and_progress_follow_dask_completion(
    dask: DaskCluster, tmp_path: Path
) -> None:
    release = tmp_path / "release"

    @parallelize.parallelize(method=Method.DASK)
    def step(i: int, path: str) -> int:
        if i == 0:
            deadline = time.monotonic() + 60
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.02)
        return i

    futures = [step(i, str(release)) for i in range(6)]
    try:
        first = next(wait_any(futures, timeout=TIMEOUT))
        assert first.result() != 0
    finally:
        release.touch()
    done = wait_all(futures, timeout=TIMEOUT, progress=True)
    assert sorted(f.result() for f in done) == list(range(6))


def test_stats_and_timeline_rows_per_worker(dask: DaskCluster, tmp_path: Path) -> None:
    @parallelize.parallelize(method=Method.DASK)
    def where(i: int) -> str:
        time.sleep(0.05)
        return _worker_name()

    names = [f.result(TIMEOUT) for f in wait_all([where(i) for i in range(12)], timeout=TIMEOUT)]
    stats = _executor().stats()
    assert stats.succeeded == 12 and stats.durations.size == 12
    assert all(d >= 0.04 for d in stats.durations)
    hosts = {row["host"]: row["done"] for row in stats.extra["hosts"]}
    assert sum(hosts.values()) == 12 and all(h.startswith("tcp://127.0.0.1:") for h in hosts)
    assert len(hosts) == len(set(names))
    attempts = stats.extra["attempts"]
    assert len(attempts) == 12 and {a["outcome"] for a in attempts} == {"won"}
    pytest.importorskip("matplotlib")
    image = stats.save_timeline(tmp_path / "timeline.png")
    assert image.stat().st_size > 0


def test_each_row_names_the_worker_that_ran_the_call(dask: DaskCluster) -> None:
    """The rows come from the scheduler's records: a call's row is on the worker that ran it
    (as the worker itself says), and spans at least the time the call slept there."""

    @parallelize.parallelize(method=Method.DASK)
    def address(i: int) -> str:
        from distributed import get_worker

        time.sleep(0.05)
        return str(get_worker().address)

    futures = [address(i) for i in range(8)]
    ran_on = {f.future.call_id: f.result(TIMEOUT) for f in futures}
    rows = {row.bundle: row for row in _executor().stats().attempts if row.bundle in ran_on}
    assert set(rows) == set(ran_on)
    for call_id, worker in ran_on.items():
        row = rows[call_id]
        assert row.host == row.slot == worker
        assert row.end is not None and row.end - row.start >= 0.05


def test_application_error_keeps_type_and_traceback_and_is_not_retried(
    dask: DaskCluster, tmp_path: Path
) -> None:
    log = tmp_path / "runs"

    @parallelize.parallelize(method=Method.DASK)
    def fails(path: str) -> None:
        with open(path, "a") as out:
            out.write("run\n")
        raise KeyError("missing column")

    future = fails(str(log))
    with pytest.raises(KeyError, match="missing column") as info:
        future.result(TIMEOUT)
    assert isinstance(info.value.__cause__, parallelize.RemoteTraceback)
    assert "fails" in info.value.__cause__.tb
    assert log.read_text() == "run\n"
    assert _executor().stats().failed == 1


def _kill_worker_if(i: int, bad: int) -> int:
    if i == bad:
        time.sleep(0.2)
        os._exit(13)
    time.sleep(0.02)
    return i


def test_call_that_kills_its_worker_is_poisoned_others_succeed(dask: DaskCluster) -> None:
    parallelize.configure(dask_address=dask.address, backups=False)
    work = parallelize.parallelize(method=Method.DASK)(_kill_worker_if)
    futures = [work(i, 17) for i in range(50)]
    wait_all(futures, timeout=TIMEOUT * 2)
    bad = futures[17]
    with pytest.raises(PoisonedCallError) as info:
        bad.result()
    error = info.value
    assert isinstance(error, parallelize.TaskLostError)
    assert len(error.attempts) == 3  # allowed-failures 2: the third death gives up
    assert all(a.host.startswith("tcp://127.0.0.1:") for a in error.attempts)
    assert all("died" in a.reason for a in error.attempts)
    for attempt in error.attempts:
        assert attempt.host in str(error)
    assert [f.result() for i, f in enumerate(futures) if i != 17] == [
        i for i in range(50) if i != 17
    ]
    stats = _executor().stats()
    assert stats.failed == 1 and stats.succeeded == 49
    assert [a["outcome"] for a in stats.extra["attempts"]].count("lost") == 3
    client = _executor().client
    client.wait_for_workers(2, timeout=TIMEOUT)  # the nannies restarted the workers


def _stuck_on_w0(i: int, release: str) -> str:
    """Blocks on worker w0 (until *release* exists), quick on w1."""
    name = _worker_name()
    if name == "w0":
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
    else:
        time.sleep(0.05)
    return name


def test_straggler_gets_a_backup_and_the_first_copy_wins(dask: DaskCluster, tmp_path: Path) -> None:
    release = tmp_path / "release"
    work = parallelize.parallelize(method=Method.DASK)(_stuck_on_w0)
    try:
        # Dask spreads the first calls over both idle workers, so one starts on w0 and
        # would never finish there: only its backup on w1 can complete it.
        futures = [work(i, str(release)) for i in range(6)]
        done = wait_all(futures, timeout=TIMEOUT)
        assert [f.result() for f in done] == ["w1"] * 6
        stats = _executor().stats()
    finally:
        release.touch()
    assert stats.extra["backups_won"] >= 1
    assert stats.extra["backups_started"] <= 2 * 6
    outcomes = {a["outcome"] for a in stats.extra["attempts"] if a["is_backup"]}
    assert "won" in outcomes


def test_backups_can_be_switched_off(dask: DaskCluster) -> None:
    parallelize.configure(dask_address=dask.address, backups=False)

    @parallelize.parallelize(method=Method.DASK)
    def one() -> int:
        return 1

    assert one().result(TIMEOUT) == 1
    executor = _executor()
    assert executor.backups is False and executor._heartbeat is None
    assert executor.stats().extra["backups_started"] == 0


def test_executor_accepts_a_distributed_client_and_leaves_it_open(dask: DaskCluster) -> None:
    from distributed import Client

    with Client(dask.address, set_as_default=False) as client:

        @parallelize.parallelize(executor=client)
        def add(a: int, b: int) -> int:
            return a + b

        future = add(2, b=3)
        assert future.result(TIMEOUT) == 5
        owner = future.future.owner
        owner.shutdown()  # type: ignore[union-attr]
        assert client.status == "running"
        assert client.submit(int, "4", pure=False).result(TIMEOUT) == 4


def test_address_from_the_environment(dask: DaskCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    parallelize.configure()
    monkeypatch.setenv("PARALLELIZE_DASK_ADDRESS", dask.address)

    @parallelize.parallelize(method="dask")
    def pid() -> int:
        return os.getpid()

    assert pid().result(TIMEOUT) != os.getpid()
    assert _executor().client.scheduler.address == dask.address
