"""One lifecycle for every executor type: one registry of live executors, one fork hook.

A forked child must never hang on an executor it inherited: the executors a user
created refuse a submit with the fix, and the default executors of @parallelize
are re-created there.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cloudpickle
import pytest

from parallelize import Method, ProcessExecutor, ThreadExecutor, parallelize
from parallelize._executor_base import BaseExecutor, live_executors

# REMOTE slots do not share our sys.path: send this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x: int) -> int:
    return x * x


def _in_forked_child(body: Callable[[], str], timeout: float = 60.0) -> str:
    """Run *body* in a forked child and return what it reported; fail if the child hangs."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_fd)
            try:
                report = body()
            except BaseException as exc:
                report = f"raised {type(exc).__name__}: {exc}"
            os.write(write_fd, report.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)  # polling the child's exit, not synchronising on a guess
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read_fd)
        pytest.fail(f"the forked child did not finish within {timeout} s (it hung)")
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read().decode()
    assert status is not None and os.waitstatus_to_exitcode(status) == 0, status
    return report


@pytest.fixture(params=["thread", "process", "remote"])
def user_executor(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BaseExecutor]:
    ex: BaseExecutor
    if request.param == "thread":
        ex = ThreadExecutor(2)
    elif request.param == "process":
        ex = ProcessExecutor(2)
    else:
        monkeypatch.delenv("PARALLELIZE_POOL_FILE", raising=False)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
        from remote import RemoteExecutor

        ex = RemoteExecutor()  # the embedded pool of local agents
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_registry_lists_live_executors_until_shutdown_or_collection() -> None:
    kept = ThreadExecutor(1, name="lifecycle-kept")
    dropped = ThreadExecutor(1, name="lifecycle-dropped")
    names = {e.name for e in live_executors()}
    assert {"lifecycle-kept", "lifecycle-dropped"} <= names

    kept.shutdown()
    assert "lifecycle-kept" not in {e.name for e in live_executors()}

    del dropped
    gc.collect()
    assert "lifecycle-dropped" not in {e.name for e in live_executors()}


def test_user_executor_refuses_in_a_forked_child_with_the_fix(
    user_executor: BaseExecutor,
) -> None:
    assert user_executor.submit(square, 3).result(timeout=60) == 9

    def child() -> str:
        user_executor.submit(square, 4).result(timeout=30)
        return "the child ran a call on the parent's executor"

    report = _in_forked_child(child)
    assert report.startswith("raised RuntimeError"), report
    assert "forked child" in report and "Fix:" in report, report
    assert type(user_executor).__name__ in report, report
    # The parent's executor is untouched by the child.
    assert user_executor.submit(square, 5).result(timeout=60) == 25


@pytest.mark.parametrize("method", ["thread", "process"])
def test_default_executors_are_recreated_in_a_forked_child(method: str) -> None:
    fn = parallelize(method=Method.THREAD if method == "thread" else Method.PROCESS)(square)
    assert fn(6).result(timeout=60) == 36

    def child() -> str:
        return f"ok {fn(7).result(timeout=30)}"

    assert _in_forked_child(child) == "ok 49"
    assert fn(8).result(timeout=60) == 64
