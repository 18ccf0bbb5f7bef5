"""Tests of ProcessExecutor with real worker processes (no mocks).

Synchronisation between the test and its tasks uses FIFOs (``Gate``): a task
blocks opening a FIFO until the test opens the other end, so nothing relies on
sleeping. Every test has a deadlock guard.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any

import pytest

from parallelize._errors import PicklingError, RemoteTraceback, WorkerDiedError
from parallelize._process import ProcessExecutor
from parallelize._stats import Outcome
from smart_future import StoppableFuture

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parent.parent


# -- helpers run in the workers ------------------------------------------------


class Gate:
    """A one-shot rendezvous through a FIFO, usable across processes.

    ``wait`` (in a task) blocks until the test calls ``open``; ``open`` blocks
    until a task is waiting, so the test also learns that the task has started.
    """

    def __init__(self, directory: Path, name: str) -> None:
        self.path = str(directory / name)
        os.mkfifo(self.path)

    def wait(self) -> None:
        with open(self.path, "rb") as fifo:
            fifo.read()

    def open(self) -> None:
        with open(self.path, "wb"):
            pass


def noop() -> None:
    return None


def double(x: int) -> int:
    return 2 * x


def getpid(*_: Any) -> int:
    return os.getpid()


def wait_then(gate: Gate, value: Any = None) -> Any:
    gate.wait()
    return value


def wait_then_pid(gate: Gate) -> int:
    gate.wait()
    return os.getpid()


def wait_then_exit(gate: Gate, code: int) -> None:
    gate.wait()
    os._exit(code)


def exit_now(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def raise_value_error(x: int) -> None:
    raise ValueError(f"bad value {x}")


def sys_exit(code: int) -> None:
    sys.exit(code)


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def spin_pid(n: int) -> int:
    spin(n)
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)  # simulated work, not synchronisation
    return value


def return_lock() -> threading.Lock:
    return threading.Lock()


def say(text: str) -> str:
    print(f"stdout: {text}")
    print(f"stderr: {text}", file=sys.stderr)
    return text


class UnpicklableError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise UnpicklableError("holding a lock")


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt from its args (the classic pitfall)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)
        self.b = b


def raise_two_arg() -> None:
    raise TwoArgError("first", "second")


class Counter:
    def __init__(self, start: int) -> None:
        self.start = start

    def add(self, k: int) -> int:
        return self.start + k


def alive(pid: int) -> bool:
    """True while *pid* exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_until_dead(pids: list[int], timeout: float = 30.0) -> list[int]:
    """Poll until every pid is gone; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = [pid for pid in pids if alive(pid)]
        if not remaining or time.monotonic() > deadline:
            return remaining
        time.sleep(0.05)


# -- fixtures ----------------------------------------------------------------


@pytest.fixture
def executor() -> Iterator[ProcessExecutor]:
    ex = ProcessExecutor(2, name="test")
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def single() -> Iterator[ProcessExecutor]:
    ex = ProcessExecutor(1, name="single")
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def force_batching(ex: ProcessExecutor) -> None:
    """Make the pool send up to 64 tasks per message whatever the durations measured."""
    ex._pool._depth = lambda: 64  # type: ignore[method-assign]


# -- results -------------------------------------------------------------------


def test_submit_returns_a_stoppable_future(executor: ProcessExecutor) -> None:
    future = executor.submit(double, 21)
    # A standard Future whose running call can also be stopped (see test_process_task_control).
    assert isinstance(future, Future) and isinstance(future, StoppableFuture)
    assert future.result() == 42


def test_map_preserves_order(executor: ProcessExecutor) -> None:
    assert list(executor.map(double, range(200))) == [2 * i for i in range(200)]


def test_lambdas_closures_and_kwargs(executor: ProcessExecutor) -> None:
    offset = 10

    def add_offset(x: int, *, scale: int = 1) -> int:
        return (x + offset) * scale

    assert executor.submit(lambda: 7).result() == 7
    assert executor.submit(add_offset, 1, scale=3).result() == 33
    assert [f.result() for f in [executor.submit(add_offset, i) for i in range(5)]] == [
        10,
        11,
        12,
        13,
        14,
    ]


def test_bound_method(executor: ProcessExecutor) -> None:
    counter = Counter(3)
    assert executor.submit(counter.add, 4).result() == 7
    counter.start = 100  # the instance is pickled with every call
    assert executor.submit(counter.add, 4).result() == 104


def test_with_statement_and_many_tasks() -> None:
    with ProcessExecutor(2) as ex:
        futures = [ex.submit(double, i) for i in range(2000)]
        assert [f.result() for f in futures] == [2 * i for i in range(2000)]
    assert ex.is_shutdown


def test_run_in_executor(executor: ProcessExecutor) -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, double, 5)

    assert asyncio.run(main()) == 10


def test_large_arguments_and_results(executor: ProcessExecutor) -> None:
    blob = os.urandom(3 * 1024 * 1024)  # bigger than a pipe buffer, both ways
    futures = [executor.submit(bytes.upper, blob) for _ in range(3)]
    assert all(f.result() == blob.upper() for f in futures)


# -- exceptions and pickling -------------------------------------------------------


def test_exception_type_message_and_remote_traceback(executor: ProcessExecutor) -> None:
    with pytest.raises(ValueError, match="bad value 3") as info:
        executor.submit(raise_value_error, 3).result()
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_value_error" in cause.tb
    assert "ValueError: bad value 3" in cause.tb


def test_unpicklable_exception_becomes_runtime_error(executor: ProcessExecutor) -> None:
    with pytest.raises(RuntimeError, match="UnpicklableError: holding a lock") as info:
        executor.submit(raise_unpicklable).result()
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise_unpicklable" in info.value.__cause__.tb


def test_exception_that_cannot_be_rebuilt(executor: ProcessExecutor) -> None:
    with pytest.raises(RuntimeError, match="TwoArgError: first"):
        executor.submit(raise_two_arg).result()


def test_unpicklable_argument_raises_at_submit(executor: ProcessExecutor) -> None:
    with pytest.raises(PicklingError, match=r"double.*argument 'x'"):
        executor.submit(double, threading.Lock())  # type: ignore[arg-type]
    assert executor.stats().submitted == 0


def test_unpicklable_function_raises_at_submit(executor: ProcessExecutor) -> None:
    lock = threading.Lock()

    def uses_lock() -> bool:
        return lock.locked()

    with pytest.raises(PicklingError, match="uses_lock"):
        executor.submit(uses_lock)


def test_unpicklable_result(executor: ProcessExecutor) -> None:
    with pytest.raises(PicklingError, match=r"return_lock.*lock"):
        executor.submit(return_lock).result()
    assert executor.submit(double, 1).result() == 2


def test_system_exit_arrives_as_itself_and_worker_survives(single: ProcessExecutor) -> None:
    pid = single.submit(getpid).result()
    with pytest.raises(SystemExit) as caught:
        single.submit(sys_exit, 4).result()
    assert caught.value.code == 4
    assert single.submit(getpid).result() == pid


# -- worker death --------------------------------------------------------------------


def test_worker_exit_fails_only_its_task(executor: ProcessExecutor) -> None:
    others = [executor.submit(sleep_then, 0.01, i) for i in range(20)]
    crash = executor.submit(exit_now, 3)
    more = [executor.submit(double, i) for i in range(20)]
    with pytest.raises(WorkerDiedError, match=r"died with exit code 3 while running .*exit_now"):
        crash.result()
    assert [f.result() for f in others] == list(range(20))
    assert [f.result() for f in more] == [2 * i for i in range(20)]
    # The pool keeps serving, with a replacement worker.
    assert list(executor.map(double, range(10))) == [2 * i for i in range(10)]
    stats = executor.stats()
    assert stats.failed == 1 and stats.live == 0


def test_sigkill_names_the_signal(executor: ProcessExecutor) -> None:
    with pytest.raises(WorkerDiedError, match=r"killed by signal SIGKILL \(9\).*kill_self"):
        executor.submit(kill_self).result()
    assert executor.submit(double, 4).result() == 8


def test_dead_worker_is_reaped_and_replaced(single: ProcessExecutor) -> None:
    pid = single.submit(getpid).result()
    with pytest.raises(WorkerDiedError, match=f"worker process {pid} died with exit code 7"):
        single.submit(exit_now, 7).result()
    new_pid = single.submit(getpid).result()
    assert new_pid != pid
    with pytest.raises(ChildProcessError):  # already reaped by the pool
        os.waitpid(pid, os.WNOHANG)


def test_tasks_sent_behind_a_crash_are_requeued(single: ProcessExecutor, tmp_path: Path) -> None:
    single.submit(noop).result()  # worker started
    force_batching(single)
    gate = Gate(tmp_path, "gate")
    first = single.submit(wait_then, gate, "first")  # runs now: the rest queue behind it
    before = single.submit(double, 1)
    crash = single.submit(exit_now, 5)
    behind = [single.submit(double, i) for i in range(10)]
    gate.open()  # first returns; the rest go to the worker in one batch
    assert first.result() == "first"
    assert before.result() == 2  # written before the crash: delivered
    with pytest.raises(WorkerDiedError, match="exit code 5"):
        crash.result()
    assert [f.result() for f in behind] == [2 * i for i in range(10)]
    assert single._pool.requeued == 10
    stats = single.stats()
    assert (stats.succeeded, stats.failed, stats.live) == (13, 1, 0)


def test_workers_fail_to_start_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("parallelize._process._handles.BOOTSTRAP", "import no_such_module_xyz")
    with ProcessExecutor(1) as ex:
        futures = [ex.submit(double, i) for i in range(5)]
        for future in futures:
            with pytest.raises(WorkerDiedError):
                future.result()


# -- cancellation and shutdown ---------------------------------------------------------


def test_shutdown_waits_for_queued_and_running() -> None:
    ex = ProcessExecutor(2)
    futures = [ex.submit(sleep_then, 0.02, i) for i in range(8)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(8))


def test_shutdown_cancel_futures(single: ProcessExecutor, tmp_path: Path) -> None:
    gate = Gate(tmp_path, "gate")
    running = single.submit(wait_then, gate, "done")
    queued = [single.submit(double, i) for i in range(5)]
    single.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    gate.open()
    assert running.result() == "done"
    single.shutdown(wait=True)
    stats = single.stats()
    assert (stats.succeeded, stats.cancelled, stats.live) == (1, 5, 0)


def test_cancel_queued_and_future_cancel(single: ProcessExecutor, tmp_path: Path) -> None:
    gate = Gate(tmp_path, "gate")
    running = single.submit(wait_then, gate, "done")
    queued = [single.submit(double, i) for i in range(4)]
    assert queued[0].cancel()
    assert single.cancel_queued() == 3
    deadline = time.monotonic() + 30
    while not running.running():  # once the worker has started it (not when it is sent)
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.01)
    assert not running.cancel()  # the raw future keeps the standard semantics
    gate.open()
    assert running.result() == "done"
    assert all(f.cancelled() for f in queued)
    with pytest.raises(CancelledError):
        queued[1].result()
    assert single.submit(double, 2).result() == 4
    assert single.stats().cancelled == 4


def test_submit_after_shutdown_raises() -> None:
    ex = ProcessExecutor(1)
    assert ex.submit(double, 1).result() == 2
    ex.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        ex.submit(double, 1)
    never_started = ProcessExecutor(1)
    never_started.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        never_started.submit(double, 1)


def test_no_worker_remains_after_shutdown() -> None:
    ex = ProcessExecutor(2)
    futures = [ex.submit(spin_pid, 200_000) for _ in range(6)]
    pids = set(ex.worker_pids()) | {f.result() for f in futures}
    assert pids
    ex.shutdown(wait=True)
    for pid in pids:
        assert not alive(pid)
        with pytest.raises(ChildProcessError):  # reaped: no zombie left
            os.waitpid(pid, os.WNOHANG)
    assert ex.worker_pids() == []


def test_shutdown_without_wait_still_reaps(tmp_path: Path) -> None:
    ex = ProcessExecutor(1)
    pid = ex.submit(getpid).result()
    future = ex.submit(sleep_then, 0.05, "late")
    ex.shutdown(wait=False)
    assert future.result() == "late"
    ex.shutdown(wait=True)  # second call only joins
    assert not alive(pid)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_parent_death_leaves_no_orphans(how: str, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from parallelize._process import ProcessExecutor

        def hold(fifo):
            with open(fifo, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(300)

        ex = ProcessExecutor(2)
        fifos = []
        for i in range(2):
            fifos.append(os.path.join({str(tmp_path)!r}, f"started{{i}}"))
            os.mkfifo(fifos[-1])
        futures = [ex.submit(hold, fifo) for fifo in fifos]
        pids = []
        for fifo in fifos:  # both tasks are running
            with open(fifo) as f:
                pids.append(f.read())
        print(" ".join(pids), flush=True)
        if {how!r} == "exit":
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50
    )
    pids = [int(pid) for pid in child.stdout.split()]
    assert len(pids) == 2, child.stderr
    assert wait_until_dead(pids) == []


# -- processes, output, paths ------------------------------------------------------------


def test_user_print_reaches_output(capfd: pytest.CaptureFixture[str]) -> None:
    with ProcessExecutor(1) as ex:
        assert ex.submit(say, "hello from a worker").result() == "hello from a worker"
    out, err = capfd.readouterr()
    assert "stdout: hello from a worker" in out
    assert "stderr: hello from a worker" in err


def test_module_on_runtime_sys_path(executor: ProcessExecutor, tmp_path: Path) -> None:
    executor.submit(noop).result()  # workers exist before the path changes
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "pz_runtime_module.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(module_dir))
    try:
        module = importlib.import_module("pz_runtime_module")
        assert [f.result() for f in [executor.submit(module.triple, i) for i in range(4)]] == [
            0,
            3,
            6,
            9,
        ]
        with ProcessExecutor(1) as fresh:  # and in a pool started after the change
            assert fresh.submit(module.triple, 5).result() == 15
    finally:
        sys.path.remove(str(module_dir))
        sys.modules.pop("pz_runtime_module", None)


def test_cpu_bound_tasks_use_both_workers(executor: ProcessExecutor) -> None:
    started = time.perf_counter()
    spin(300_000)
    per_call = time.perf_counter() - started
    n = max(10_000, int(300_000 * 0.05 / per_call))  # ~50 ms each
    pids = [f.result() for f in [executor.submit(spin_pid, n) for _ in range(16)]]
    assert len(set(pids)) == 2
    assert max(pids.count(pid) for pid in set(pids)) <= 12  # spread, not prefetched into one


def test_workers_ignore_sigint(single: ProcessExecutor, tmp_path: Path) -> None:
    gate = Gate(tmp_path, "gate")
    pid = single.submit(getpid).result()
    future = single.submit(wait_then_pid, gate)
    os.kill(pid, signal.SIGINT)
    gate.open()
    assert future.result() == pid
    assert alive(pid)


def test_stats_counts_and_durations(executor: ProcessExecutor) -> None:
    ok = [executor.submit(sleep_then, 0.03, i) for i in range(4)]
    bad = [executor.submit(raise_value_error, i) for i in range(2)]
    died = executor.submit(exit_now, 1)
    for f in ok:
        f.result()
    for f in [*bad, died]:
        with pytest.raises(Exception):  # noqa: B017
            f.result()
    stats = executor.stats()
    assert (stats.submitted, stats.succeeded, stats.failed, stats.live) == (7, 4, 3, 0)
    assert len(stats.durations) == 6  # the dead worker's task has no duration
    assert sorted(stats.durations)[-4:][0] >= 0.025
    assert executor.live_tasks == 0
    assert Outcome.SUCCEEDED.value in stats.format()


def test_function_is_sent_once_per_worker(single: ProcessExecutor) -> None:
    single.submit(double, 1).result()
    worker = single._pool.workers[0]
    assert len(worker.known) == 1
    for future in [single.submit(double, i) for i in range(50)]:
        future.result()
    assert len(worker.known) == 1
    assert len(single._pool.function_ids) == 1


def test_fork_child_sees_inert_executor(executor: ProcessExecutor) -> None:
    assert executor.submit(double, 1).result() == 2
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            if executor.is_shutdown:
                try:
                    executor.submit(double, 1)
                except RuntimeError:
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert executor.submit(double, 3).result() == 6
