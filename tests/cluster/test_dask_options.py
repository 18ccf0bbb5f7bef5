"""Per-call options (``submit_with``) on a real Dask cluster: timeout and backups=False."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from engines import TIMEOUT, DaskCluster, wait_until

import parallelize
from parallelize import Method, TaskTimeoutError
from parallelize.ext import CallOptions


def _executor() -> Any:
    return parallelize.default_executor(Method.DASK)


def _blocked(path: str) -> str:
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "ran"


def _quick(i: int) -> int:
    return i * 2


def _stuck_on_w0(i: int, release: str) -> str:
    from distributed import get_worker

    name = str(get_worker().name)
    if name == "w0":
        _blocked(release)
    else:
        time.sleep(0.05)
    return name


def test_timeout_fails_the_call_and_cancels_its_task(dask: DaskCluster, tmp_path: Path) -> None:
    release = tmp_path / "release"
    executor = _executor()
    assert executor.supports_timeout
    try:
        future = executor.submit_with(CallOptions(timeout=0.5), _blocked, str(release))
        with pytest.raises(TaskTimeoutError) as info:
            future.result(TIMEOUT)
        error = info.value
        assert error.timeout == 0.5 and error.function.endswith("_blocked")
        assert "Dask worker tcp://127.0.0.1:" in error.where and "runs on" in error.where
        engine = future.engine_future
        wait_until(lambda: engine.status == "cancelled", "the Dask task to be cancelled")
        # The executor keeps serving.
        assert executor.submit(_quick, 4).result(TIMEOUT) == 8
    finally:
        release.touch()
    stats = executor.stats()
    assert stats.failed == 1 and stats.succeeded == 1


def test_timeout_counts_from_when_the_call_starts(dask: DaskCluster, tmp_path: Path) -> None:
    release = tmp_path / "release"
    executor = _executor()
    try:
        blockers = [executor.submit(_blocked, str(release)) for _ in range(2)]  # both workers
        wait_until(
            lambda: len([k for ks in executor.client.processing().values() for k in ks]) == 2,
            "both workers to run a blocker",
        )
        queued = executor.submit_with(CallOptions(timeout=0.3), _quick, 21)
        # Queued behind the blockers (the scheduler may already have assigned it to a
        # worker, where it waits for the thread) for many times its timeout: not timed out.
        waited_until = time.monotonic() + 2.0
        while time.monotonic() < waited_until:
            assert not queued.done()
            time.sleep(0.05)
    finally:
        release.touch()
    assert queued.result(TIMEOUT) == 42
    assert [b.result(TIMEOUT) for b in blockers] == ["ran", "ran"]


def test_backups_false_keeps_a_straggler_single(dask: DaskCluster, tmp_path: Path) -> None:
    release = tmp_path / "release"
    executor = _executor()
    assert executor.backups
    options = CallOptions(backups=False)
    try:
        futures = [executor.submit_with(options, _stuck_on_w0, i, str(release)) for i in range(6)]
        wait_until(lambda: sum(f.done() for f in futures) == 5, "the calls on w1")
        # Without the option the stuck call would get a copy within a few heartbeats
        # (test_dask.py's straggler test); with it, none comes.
        waited_until = time.monotonic() + 2.0
        while time.monotonic() < waited_until:
            assert executor.stats().extra["backups_started"] == 0
            time.sleep(0.1)
        stuck = next(f for f in futures if not f.done())
    finally:
        release.touch()
    assert stuck.result(TIMEOUT) == "w0"
