"""Timeouts, cancelling a running call and speculative backups on a real Ray cluster.

Runs inside a loopback-only network namespace (marker ``ray``, see ``ray_netns.py``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from engines import TIMEOUT, RayCluster, _pid_alive, wait_until

import parallelize
from parallelize import Method, TaskTimeoutError
from parallelize.ext import CallOptions

pytestmark = pytest.mark.ray


def _executor() -> Any:
    return parallelize.default_executor(Method.RAY)


def _block_writing_pid(pid_file: str, release: str) -> str:
    with open(pid_file, "w") as out:
        out.write(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "ran"


def _pid_of(path: Path) -> int:
    wait_until(lambda: path.exists() and path.read_text(), "the call to start")
    return int(path.read_text())


def _first_attempt_sticks(i: int, flag: str, release: str) -> str:
    """Call 0's first attempt blocks (until *release*); any later copy returns at once."""
    if i != 0:
        time.sleep(0.05)
        return "quick"
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return "copy"
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    _block_writing_pid(flag + ".pid", release)
    return "original"


def test_timeout_kills_the_worker_running_the_call(ray_runtime: RayCluster, tmp_path: Path) -> None:
    pid_file, release = tmp_path / "pid", tmp_path / "release"
    executor = _executor()
    assert executor.supports_timeout
    # On Ray the timeout counts from submit (see _ray): have idle workers ready, so that
    # the call starts well before its deadline and the kill hits it running.
    assert sum(f.result(TIMEOUT) for f in [executor.submit(abs, -1) for _ in range(2)]) == 2
    try:
        future = executor.submit_with(
            CallOptions(timeout=6.0), _block_writing_pid, str(pid_file), str(release)
        )
        pid = _pid_of(pid_file)
        with pytest.raises(TaskTimeoutError) as info:
            future.result(TIMEOUT)
        assert info.value.timeout == 6.0 and "Ray worker" in info.value.where
        wait_until(lambda: not _pid_alive(pid), "the Ray worker to be killed")
        assert executor.submit(abs, -3).result(TIMEOUT) == 3  # Ray starts another worker
    finally:
        release.touch()
    # Every attempt of the call (a backup copy too, if it got one) was timed out.
    attempts = executor.stats().extra["attempts"]
    timed_out = [a for a in attempts if a["outcome"] == "timed out"]
    assert timed_out and {a["bundle"] for a in timed_out} == {future.call_id}


def test_cancel_stops_a_running_call(ray_runtime: RayCluster, tmp_path: Path) -> None:
    pid_file, release = tmp_path / "pid", tmp_path / "release"

    @parallelize.parallelize(method=Method.RAY)
    def blocked(pid_path: str, release_path: str) -> str:
        return _block_writing_pid(pid_path, release_path)

    try:
        future = blocked(str(pid_file), str(release))
        pid = _pid_of(pid_file)
        assert future.cancel() and future.cancelled()
        wait_until(lambda: not _pid_alive(pid), "the Ray worker running the call to be killed")
    finally:
        release.touch()
    assert _executor().stats().cancelled == 1


def test_straggler_gets_a_backup_and_the_first_copy_wins(
    ray_runtime: RayCluster, tmp_path: Path
) -> None:
    flag, release = tmp_path / "flag", tmp_path / "release"
    executor = _executor()
    assert executor.backups
    try:
        futures = [
            executor.submit(_first_attempt_sticks, i, str(flag), str(release)) for i in range(6)
        ]
        # Only a copy can finish call 0 before the release.
        assert futures[0].result(TIMEOUT) == "copy"
        assert [f.result(TIMEOUT) for f in futures[1:]] == ["quick"] * 5
        original = _pid_of(Path(str(flag) + ".pid"))
        wait_until(lambda: not _pid_alive(original), "the losing copy to be killed")
    finally:
        release.touch()
    stats = executor.stats()
    assert stats.extra["backups_started"] == 1 and stats.extra["backups_won"] == 1
    rows = [a for a in stats.extra["attempts"] if a["bundle"] == 0]
    wait_until(lambda: len(executor.stats().extra["attempts"]) == 7, "the loser's record")
    rows = [a for a in executor.stats().extra["attempts"] if a["bundle"] == 0]
    assert sorted((a["is_backup"], a["outcome"]) for a in rows) == [
        (False, "cancelled"),
        (True, "won"),
    ]


def test_backups_false_keeps_a_straggler_single(ray_runtime: RayCluster, tmp_path: Path) -> None:
    flag, release = tmp_path / "flag", tmp_path / "release"
    executor = _executor()
    options = CallOptions(backups=False)
    try:
        futures = [
            executor.submit_with(options, _first_attempt_sticks, i, str(flag), str(release))
            for i in range(6)
        ]
        assert [f.result(TIMEOUT) for f in futures[1:]] == ["quick"] * 5
        waited_until = time.monotonic() + 2.0  # many heartbeats: no copy may start
        while time.monotonic() < waited_until:
            assert executor.stats().extra["backups_started"] == 0
            time.sleep(0.1)
    finally:
        release.touch()
    assert futures[0].result(TIMEOUT) == "original"
