"""Method.RAY on a real Ray cluster (``ray start --head`` on loopback, one runtime per session).

Every test here runs inside a loopback-only network namespace (marker ``ray``, see
``ray_netns.py``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from engines import TIMEOUT, RayCluster

import parallelize
from parallelize import Method, PoisonedCallError, wait_all, wait_any
from parallelize._cluster._engine_future import EngineFuture

pytestmark = pytest.mark.ray


def _executor() -> Any:
    return parallelize.default_executor(Method.RAY)


def _block_until(path: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_ray_runs_in_a_loopback_only_namespace(ray_runtime: RayCluster) -> None:
    """Nothing Ray does can leave the namespace: its only interface is lo, it has no route,
    and every Ray node and every TCP connection is on 127.0.0.1."""
    import subprocess

    import ray
    import ray_netns

    assert ray_netns.inside() is not None
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    routes = subprocess.run(["ip", "route", "show"], capture_output=True, text=True).stdout
    assert routes.strip() == ""
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}

    @parallelize.parallelize(method=Method.RAY)
    def ping() -> int:
        return 1

    assert ping().result(TIMEOUT) == 1
    sockets = subprocess.run(["ss", "-Htn"], capture_output=True, text=True).stdout.split("\n")
    peers = [line.split()[4] for line in sockets if line.strip()]
    assert peers and all(p.startswith(("127.", "[::1]", "[::ffff:127.")) for p in peers), peers


def test_every_keyword_reaches_the_function(ray_runtime: RayCluster) -> None:
    import ray

    @parallelize.parallelize(method=Method.RAY)
    def echo(x: int, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        return x, kwargs

    names = {"fn": 1, "key": "k", "num_cpus": 8, "max_retries": 0, "_metadata": None}
    future = echo(1, **names)
    assert isinstance(future.future, EngineFuture)
    assert isinstance(future.future.engine_future, ray.ObjectRef)
    assert future.result(TIMEOUT) == (1, names)


def test_chained_call_is_handed_to_ray_at_once(ray_runtime: RayCluster, tmp_path: Path) -> None:
    release = tmp_path / "release"

    @parallelize.parallelize(method=Method.RAY)
    def produce(path: str) -> list[int]:
        _block_until(path)
        return [1, 2, 3]

    @parallelize.parallelize(method=Method.RAY)
    def total(values: list[int], *, scale: list[int]) -> int:
        return sum(values) * len(scale)

    try:
        produced = produce(str(release))
        result = total(produced, scale=produced)
        # Submitted to Ray straight away with the ObjectRef, not held back in this process.
        assert isinstance(result.future, EngineFuture)
        assert not result.done()
    finally:
        release.touch()
    assert result.result(TIMEOUT) == 18


class _Scaled:
    """A callable object (not a plain function: it runs through ``run_call_spread``)."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, values: list[Any], *, more: list[Any]) -> list[Any]:
        return [values, more, self.factor]


def test_chained_arguments_are_told_by_position_not_by_looks(ray_runtime: RayCluster) -> None:
    """A chained call's record is unwrapped where the driver put a future, and nowhere else:
    not a user's list that looks like a record (four items), nor what a user's own
    ObjectRef resolves to; for plain functions and other callables, by position and name."""
    import ray

    lookalike = [7, "abcdef12/pid 1", 1.0, 2.0]

    @parallelize.parallelize(method=Method.RAY)
    def produce() -> list[Any]:
        return list(lookalike)

    @parallelize.parallelize(method=Method.RAY)
    def gather(first: Any, plain: Any, own: Any, *, named: Any, other: Any) -> list[Any]:
        return [first, plain, own, named, other]

    produced = produce()
    own_ref = ray.put(lookalike)
    out = gather(produced, lookalike, own_ref, named=produced, other=lookalike)
    assert out.result(TIMEOUT) == [lookalike] * 5

    scaled = parallelize.parallelize(method=Method.RAY)(_Scaled(3))
    assert scaled(produced, more=produced).result(TIMEOUT) == [lookalike, lookalike, 3]
    assert scaled(lookalike, more=lookalike).result(TIMEOUT) == [lookalike, lookalike, 3]
    # The same function with and without chained arguments: two remote functions, both kept.
    assert gather(1, 2, 3, named=4, other=produced).result(TIMEOUT) == [1, 2, 3, 4, lookalike]
    assert gather(1, 2, 3, named=4, other=5).result(TIMEOUT) == [1, 2, 3, 4, 5]


def test_bad_arguments_fail_in_the_caller_with_or_without_chained_ones(
    ray_runtime: RayCluster,
) -> None:
    """Ray checks a call's arguments against the function's signature at submit, also for
    calls with chained arguments (whose task takes a marker first)."""

    @parallelize.parallelize(method=Method.RAY)
    def one(x: int) -> int:
        return x

    before = _executor().stats().submitted
    with pytest.raises(TypeError):
        one(1, 2)
    produced = one(1)
    with pytest.raises(TypeError):
        one(produced, extra=3)
    with pytest.raises(TypeError):
        one(produced, produced)
    assert one(produced).result(TIMEOUT) == 1
    assert one(x=produced).result(TIMEOUT) == 1
    assert _executor().stats().submitted == before + 3  # refused calls are not counted


def test_cancel_cancels_on_the_engine(ray_runtime: RayCluster, tmp_path: Path) -> None:
    import ray
    from ray.exceptions import TaskCancelledError

    release = tmp_path / "release"

    @parallelize.parallelize(method=Method.RAY)
    def blocked(path: str) -> str:
        _block_until(path)
        return "ran"

    running = [blocked(str(release)) for _ in range(2)]  # the cluster has 2 CPUs
    queued = blocked(str(release))
    try:
        assert queued.cancel() and queued.cancelled()
        with pytest.raises(TaskCancelledError):
            ray.get(queued.future.engine_future, timeout=TIMEOUT)
    finally:
        release.touch()
    assert [f.result(TIMEOUT) for f in running] == ["ran", "ran"]
    assert _executor().stats().cancelled == 1


def test_wait_any_and_stats(ray_runtime: RayCluster, tmp_path: Path) -> None:
    release = tmp_path / "release"

    @parallelize.parallelize(method=Method.RAY)
    def step(i: int, path: str) -> int:
        if i == 0:
            _block_until(path)
        return i

    futures = [step(i, str(release)) for i in range(5)]
    try:
        assert next(wait_any(futures, timeout=TIMEOUT)).result() != 0
    finally:
        release.touch()
    assert sorted(f.result() for f in wait_all(futures, timeout=TIMEOUT, progress=True)) == [
        0,
        1,
        2,
        3,
        4,
    ]
    stats = _executor().stats()
    assert stats.succeeded == 5 and stats.durations.size == 5
    assert len(stats.extra["attempts"]) == 5


def test_each_row_names_the_worker_that_ran_the_call(ray_runtime: RayCluster) -> None:
    """The rows come from the workers' own records: a call's row names the Ray worker that
    ran it (node and pid, as the worker itself says) and spans at least the time the call
    slept there; the value a caller (or a chained call) sees is the plain value."""

    @parallelize.parallelize(method=Method.RAY)
    def where(i: int) -> tuple[str, int]:
        import ray

        time.sleep(0.05)
        return ray.get_runtime_context().get_node_id()[:8], os.getpid()

    @parallelize.parallelize(method=Method.RAY)
    def first(pair: tuple[str, int]) -> str:
        return pair[0]

    futures = [where(i) for i in range(6)]
    chained = first(futures[0])
    ran_on = {f.future.call_id: f.result(TIMEOUT) for f in futures}
    assert chained.result(TIMEOUT) == ran_on[futures[0].future.call_id][0]
    rows = {row.bundle: row for row in _executor().stats().attempts if row.bundle in ran_on}
    assert set(rows) == set(ran_on)
    for call_id, (node, pid) in ran_on.items():
        row = rows[call_id]
        assert (row.host, row.slot, row.outcome) == (node, f"{node}/pid {pid}", "won")
        assert row.end is not None and row.end - row.start >= 0.05
    hosts = {h.name: h.done for h in _executor().stats().hosts}
    assert {f"{node}/pid {pid}" for node, pid in ran_on.values()} <= set(hosts)


def test_application_error_keeps_type_and_traceback_and_is_not_retried(
    ray_runtime: RayCluster, tmp_path: Path
) -> None:
    log = tmp_path / "runs"

    @parallelize.parallelize(method=Method.RAY)
    def fails(path: str) -> None:
        with open(path, "a") as out:
            out.write("run\n")
        raise ValueError("bad row 7")

    with pytest.raises(ValueError, match="bad row 7") as info:
        fails(str(log)).result(TIMEOUT)
    assert isinstance(info.value.__cause__, parallelize.RemoteTraceback)
    assert "fails" in info.value.__cause__.tb
    assert log.read_text() == "run\n"


def test_call_that_kills_its_worker_is_poisoned(ray_runtime: RayCluster) -> None:
    @parallelize.parallelize(method=Method.RAY)
    def maybe_die(i: int) -> int:
        if i == 3:
            os._exit(13)
        return i

    futures = wait_all([maybe_die(i) for i in range(8)], timeout=TIMEOUT * 2)
    with pytest.raises(PoisonedCallError) as info:
        futures[3].result()
    assert len(info.value.attempts) == 3  # max_retries=2
    assert "max_retries=2" in str(info.value)
    assert [f.result() for i, f in enumerate(futures) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
