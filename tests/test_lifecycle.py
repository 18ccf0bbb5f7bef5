"""One lifecycle for every executor type: one registry of live executors, one fork hook.

A forked child must never hang on an executor it inherited: the executors a user
created refuse a submit with the fix, and the default executors of @parallelize
are re-created there.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
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


# -- one exit hook, in stages ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _run_script(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PARALLELIZE_POOL_FILE", None)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "no-config")
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )


_EXIT_ORDER_SCRIPT = """
import atexit, time
from concurrent.futures import ProcessPoolExecutor
from parallelize import Method, ProcessExecutor, parallelize
from remote import RemoteExecutor

def slow(path, i, seconds):
    time.sleep(seconds)
    with open(path, "a") as log:
        log.write(f"{i}\\n")
    return i

if __name__ == "__main__":
    std = ProcessPoolExecutor(1)
    ours = ProcessExecutor(1)
    remote = RemoteExecutor()  # its embedded pool runs on a ProcessExecutor too
    default = parallelize(method=Method.PROCESS)(slow)
    groups = {
        "std": [std.submit(slow, "std.log", i, 0.3) for i in range(4)],
        "process": [ours.submit(slow, "process.log", i, 0.3) for i in range(4)],
        "default": [default("default.log", i, 0.3) for i in range(4)],
        "remote": [remote.submit(slow, "remote.log", i, 0.05) for i in range(4)],
    }

    def report():  # a user's exit handler, registered after the executors started
        for name, futures in groups.items():
            print(name, sum(f.done() for f in futures), flush=True)

    atexit.register(report)
    # no shutdown(), no waiting: the interpreter exits with every call pending
"""


def test_exit_finishes_process_work_before_atexit_handlers_as_process_pool_executor(
    tmp_path: Path,
) -> None:
    """PROCESS pools finish in the one exit hook, before atexit handlers, where
    ProcessPoolExecutor finishes (and REMOTE, which needs its connections open): a user's
    exit handler sees every call done under each, and each call ran exactly once."""
    proc = _run_script(tmp_path, _EXIT_ORDER_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["std 4", "process 4", "default 4", "remote 4"], (
        proc.stdout,
        proc.stderr[-3000:],
    )
    for name in ("std", "process", "default", "remote"):
        ran = sorted((tmp_path / f"{name}.log").read_text().split())
        assert ran == ["0", "1", "2", "3"], (name, ran)


_STAGES_SCRIPT = """
import os
from parallelize._executor_base import (
    ExitStage, at_fork_in_child, at_threads_exit, interpreter_exiting, waits_at_exit,
)

def hook(name, interrupt=False):
    def run():
        exiting = "exiting" if interpreter_exiting() else ""
        print(name, exiting, "waits" if waits_at_exit() else "stops", flush=True)
        if interrupt:
            raise KeyboardInterrupt
    return run

# registered out of order: they run by stage, then in order of registration
at_threads_exit(hook("defaults"), ExitStage.DEFAULTS)
at_threads_exit(hook("threads", interrupt=True), ExitStage.THREADS)
at_threads_exit(hook("pools"), ExitStage.POOLS)
at_threads_exit(hook("pools-2"), ExitStage.POOLS)
at_fork_in_child(hook("fork-timers"), ExitStage.TIMERS)
at_fork_in_child(hook("fork-defaults"), ExitStage.DEFAULTS)
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print("main done", flush=True)
"""


def test_one_exit_hook_runs_stages_in_order_and_a_ctrl_c_does_not_skip_the_rest(
    tmp_path: Path,
) -> None:
    proc = _run_script(tmp_path, _STAGES_SCRIPT)
    lines = [line.split() for line in proc.stdout.splitlines()]
    assert lines == [
        ["fork-defaults", "waits"],
        ["fork-timers", "waits"],
        ["main", "done"],
        ["threads", "exiting", "waits"],
        # A Ctrl-C in one stage: the later stages still run, and stop their work at once.
        ["pools", "exiting", "stops"],
        ["pools-2", "exiting", "stops"],
        ["defaults", "exiting", "stops"],
    ], (proc.stdout, proc.stderr)


def test_the_timer_runs_in_a_forked_child() -> None:
    """The timer thread (THREAD timeouts, retry backoffs) is re-created in a child by the
    one fork hook."""
    from parallelize._timer import call_later

    fired = threading.Event()
    call_later(0.0, fired.set)
    assert fired.wait(30)

    def child() -> str:
        again = threading.Event()
        call_later(0.0, again.set)
        return "fired" if again.wait(30) else "the timer never fired"

    assert _in_forked_child(child) == "fired"
