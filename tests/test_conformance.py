"""Our executors against the behaviour concurrent.futures defines.

Written after reading what CPython's ``Lib/test/test_concurrent_futures`` checks
(executor, shutdown, wait, as_completed and future semantics); the checks and
their code are our own. Each runs on ThreadExecutor, ProcessExecutor and
RemoteExecutor (the embedded pool of local agents, with no user pool file).

Where a behaviour differs on purpose the README says so, and the check is
skipped with that reason. (REMOTE futures report ``running()`` from when a slot
starts the call; the raw ``cancel()`` then refuses, as the standard says, and
``SmartFuture.cancel()`` stops it.)

Tasks that must stay busy wait for a *gate file* the test creates (polled, with
a generous timeout), so that the same task works in threads, processes and
agents.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from parallelize import ProcessExecutor, ThreadExecutor
from parallelize._executor_base import BaseExecutor
from smart_future import SmartFuture

# REMOTE agents do not share our sys.path: send this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60.0
METHODS = ["thread", "process", "remote"]


# -- tasks -------------------------------------------------------------------------------


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def wait_for_gate(gate: str, started: str | None = None, value: Any = None) -> Any:
    """Announce the start (creating *started*), then wait until the file *gate* exists."""
    if started is not None:
        Path(started).touch()
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.005)
    return value


def fail_with(message: str) -> None:
    raise ValueError(message)


class Payload:
    def method(self) -> None:
        pass


def make_payload(_: int) -> Payload:
    return Payload()


# -- fixtures ------------------------------------------------------------------------------


class Gate:
    """A file-system gate: tasks wait for ``path``; ``open()`` releases them all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = str(directory / "gate")
        self._count = 0

    def started_marker(self) -> str:
        self._count += 1
        return str(self.directory / f"started-{self._count}")

    def open(self) -> None:
        Path(self.path).touch()


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def make_executor(method: str, workers: int) -> BaseExecutor:
    if method == "thread":
        return ThreadExecutor(workers)
    if method == "process":
        return ProcessExecutor(workers)
    from remote import RemoteExecutor

    return RemoteExecutor()  # the embedded pool: one slot per CPU


@pytest.fixture(autouse=True)
def _no_user_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARALLELIZE_POOL_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path)
    yield g
    g.open()  # never leave a task waiting


@pytest.fixture
def executor(method: str, gate: Gate) -> Iterator[BaseExecutor]:
    ex = make_executor(method, 2)
    # Started workers, so that timeouts below measure the tasks, not interpreter start-up.
    assert [f.result(TIMEOUT) for f in [ex.submit(abs, -i) for i in range(slots(ex))]]
    yield ex
    gate.open()
    ex.shutdown(wait=True)


def slots(ex: BaseExecutor) -> int:
    """How many calls run at once."""
    hosts = getattr(ex, "hosts", None)
    if hosts is not None:
        return sum(h.slots for h in hosts)
    return int(getattr(ex, "max_workers", 1))


def occupy_all(ex: BaseExecutor, gate: Gate) -> list[cf.Future[Any]]:
    """Fill every worker with a gated task and wait until all of them run."""
    markers = [gate.started_marker() for _ in range(slots(ex))]
    futures = [ex.submit(wait_for_gate, gate.path, m) for m in markers]
    wait_until(lambda: all(os.path.exists(m) for m in markers), "the gated tasks to start")
    return futures


# -- Executor ------------------------------------------------------------------------------


def test_submit_positional_and_keyword(executor: BaseExecutor) -> None:
    assert executor.submit(pow, 2, 8).result(TIMEOUT) == 256
    assert executor.submit(mul, 2, y=8).result(TIMEOUT) == 16
    # Names of submit's own parameters are free for the callable's keywords.
    assert executor.submit(capture, 1, self=2, fn=3).result(TIMEOUT) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        executor.submit()  # type: ignore[call-arg]


def test_map_matches_builtin_map(executor: BaseExecutor) -> None:
    expected = list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10))) == expected
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == expected
    assert list(executor.map(pow, [], [])) == []


def test_map_raises_at_the_failing_item(executor: BaseExecutor) -> None:
    results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(executor: BaseExecutor, gate: Gate) -> None:
    results = executor.map(wait_for_gate, [str(gate.directory)] * 2 + [gate.path], timeout=2)
    collected = []
    with pytest.raises(TimeoutError):
        for value in results:
            collected.append(value)
    assert collected == [None, None]


@pytest.mark.parametrize("chunksize", [0, -1, 1.5])
def test_map_rejects_bad_chunksize(executor: BaseExecutor, chunksize: Any) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(abs, [1], chunksize=chunksize)


@pytest.mark.parametrize("cls", [ThreadExecutor, ProcessExecutor])
@pytest.mark.parametrize("workers", [0, -1])
def test_max_workers_must_be_positive(cls: type[BaseExecutor], workers: int) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        cls(max_workers=workers)  # type: ignore[call-arg]


def test_no_stale_reference_to_submitted_callables(executor: BaseExecutor) -> None:
    payload = Payload()
    collected = threading.Event()
    ref = weakref.ref(payload, lambda _: collected.set())
    executor.submit(payload.method).result(TIMEOUT)
    del payload
    deadline = time.monotonic() + TIMEOUT
    while not collected.is_set() and time.monotonic() < deadline:
        gc.collect()
        collected.wait(0.05)
    assert ref() is None, "the executor keeps a reference to a finished call's callable"


def test_map_keeps_no_reference_to_results(executor: BaseExecutor) -> None:
    for obj in executor.map(make_payload, range(5)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_exception_arrives_with_its_type(executor: BaseExecutor) -> None:
    future = executor.submit(fail_with, "boom")
    with pytest.raises(ValueError, match="boom"):
        future.result(TIMEOUT)
    exc = future.exception(0)
    assert isinstance(exc, ValueError) and str(exc) == "boom"


# -- shutdown ----------------------------------------------------------------------------------


def test_submit_after_shutdown_raises(method: str) -> None:
    ex = make_executor(method, 1)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 5)
    ex.shutdown()  # a second shutdown is harmless


def test_context_manager_shuts_down_after_the_work(method: str) -> None:
    with make_executor(method, 2) as ex:
        futures = [ex.submit(abs, -i) for i in range(5)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(5))
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)


def test_shutdown_waits_for_running_and_queued_tasks(method: str, gate: Gate) -> None:
    ex = make_executor(method, 2)
    running = occupy_all(ex, gate)
    queued = [ex.submit(abs, -i) for i in range(3)]
    threading.Timer(0.2, gate.open).start()
    ex.shutdown(wait=True)
    assert all(f.done() and not f.cancelled() for f in running + queued)
    assert [f.result() for f in queued] == [0, 1, 2]


def test_shutdown_without_wait_returns_and_work_completes(method: str, gate: Gate) -> None:
    ex = make_executor(method, 2)
    running = occupy_all(ex, gate)
    queued = [ex.submit(abs, -i) for i in range(3)]
    ex.shutdown(wait=False)
    assert not any(f.done() for f in running)
    gate.open()
    assert [f.result(TIMEOUT) for f in queued] == [0, 1, 2]
    assert all(f.exception(TIMEOUT) is None for f in running)


def test_shutdown_cancel_futures_cancels_only_queued(method: str, gate: Gate) -> None:
    ex = make_executor(method, 2)
    running = occupy_all(ex, gate)
    markers = [gate.started_marker() for _ in range(20)]
    queued = [ex.submit(wait_for_gate, gate.path, m) for m in markers]
    ex.shutdown(wait=False, cancel_futures=True)
    gate.open()
    ex.shutdown(wait=True)
    assert all(f.cancelled() for f in queued)
    assert not any(os.path.exists(m) for m in markers)  # none of them started
    assert all(not f.cancelled() and f.exception(TIMEOUT) is None for f in running)


def test_executor_dropped_without_shutdown_runs_what_was_queued(method: str) -> None:
    ex = make_executor(method, 1)
    futures = [ex.submit(abs, -i) for i in range(6)]
    del ex
    gc.collect()
    assert [f.result(TIMEOUT) for f in futures] == list(range(6))


def _handed_over_case(method: str) -> Any:
    if method == "thread":
        return pytest.param(
            method,
            marks=pytest.mark.skip(
                reason="ThreadPoolExecutor makes no such promise either: an idle thread may "
                "not have taken the call yet when shutdown() cancels the queue"
            ),
        )
    return method


@pytest.mark.parametrize("handed_method", [_handed_over_case(m) for m in METHODS])
def test_cancel_futures_spares_calls_handed_to_idle_workers(handed_method: str, gate: Gate) -> None:
    """Submitting to idle, started workers hands the call over (it is running, as with
    ProcessPoolExecutor); a shutdown(cancel_futures=True) right after spares it."""
    ex = make_executor(handed_method, 2)
    for future in [ex.submit(abs, -i) for i in range(slots(ex))]:
        future.result(TIMEOUT)
    markers = [gate.started_marker() for _ in range(10)]
    futures = [ex.submit(wait_for_gate, gate.path, m) for m in markers]
    ex.shutdown(wait=False, cancel_futures=True)
    gate.open()
    ex.shutdown(wait=True)
    handed_over = futures[: slots(ex)]
    assert not any(f.cancelled() for f in handed_over)
    assert all(f.exception(TIMEOUT) is None for f in handed_over)
    for future, marker in zip(futures, markers, strict=True):
        # Either it ran to completion, or it was cancelled without starting.
        assert future.cancelled() != os.path.exists(marker)


_EXIT_SCRIPT = """
import atexit, sys
from parallelize import ProcessExecutor, ThreadExecutor
from remote import RemoteExecutor

import conformance_tasks as tasks

method = sys.argv[1]
ex = {"thread": ThreadExecutor, "process": ProcessExecutor, "remote": RemoteExecutor}[method]()

def late():
    try:
        ex.submit(abs, 1)
    except RuntimeError as exc:
        print("late submit refused:", "shutting down" in str(exc), flush=True)

atexit.register(late)
futures = [ex.submit(tasks.slow_square, i) for i in range(4)]
futures[0].add_done_callback(lambda f: print("first done", f.result(), flush=True))
# No shutdown(), no result(): interpreter exit must still run every task.
"""


def test_interpreter_exit_runs_pending_work_and_refuses_late_submits(
    method: str, tmp_path: Path
) -> None:
    (tmp_path / "conformance_tasks.py").write_text(
        textwrap.dedent(
            """
            import time

            def slow_square(x):
                time.sleep(0.05)
                with open("done.txt", "a") as f:
                    f.write(f"{x}\\n")
                return x * x
            """
        )
    )
    (tmp_path / "script.py").write_text(_EXIT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    env.pop("PARALLELIZE_POOL_FILE", None)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "no-config")
    proc = subprocess.run(
        [sys.executable, "script.py", method],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "first done 0" in proc.stdout
    assert "late submit refused: True" in proc.stdout
    finished = sorted((tmp_path / "done.txt").read_text().split())
    assert finished == ["0", "1", "2", "3"]


# -- wait() and as_completed() ---------------------------------------------------------------------


def test_wait_first_completed(executor: BaseExecutor, gate: Gate) -> None:
    blocked = executor.submit(wait_for_gate, gate.path)
    quick = executor.submit(abs, -1)
    done, not_done = cf.wait([blocked, quick], timeout=TIMEOUT, return_when=cf.FIRST_COMPLETED)
    assert done == {quick} and not_done == {blocked}


def test_wait_first_exception(executor: BaseExecutor, gate: Gate) -> None:
    blocked = executor.submit(wait_for_gate, gate.path)
    ok = executor.submit(abs, -1)
    ok.result(TIMEOUT)
    failing = executor.submit(fail_with, "x")
    done, not_done = cf.wait(
        [blocked, ok, failing], timeout=TIMEOUT, return_when=cf.FIRST_EXCEPTION
    )
    assert done == {ok, failing} and not_done == {blocked}


def test_wait_all_completed_and_timeout(executor: BaseExecutor, gate: Gate) -> None:
    futures = [executor.submit(abs, -i) for i in range(4)]
    done, not_done = cf.wait(futures, timeout=TIMEOUT, return_when=cf.ALL_COMPLETED)
    assert done == set(futures) and not not_done
    blocked = executor.submit(wait_for_gate, gate.path)
    done, not_done = cf.wait([*futures, blocked], timeout=0.2)
    assert done == set(futures) and not_done == {blocked}


def test_as_completed(executor: BaseExecutor, gate: Gate) -> None:
    first = executor.submit(abs, -1)
    first.result(TIMEOUT)
    blocked = executor.submit(wait_for_gate, gate.path, None, 7)
    seen = []
    with pytest.raises(TimeoutError):
        for future in cf.as_completed([first, blocked, first], timeout=0.3):
            seen.append(future)
    assert seen == [first]  # duplicates are yielded once
    gate.open()
    assert list(cf.as_completed([blocked], timeout=TIMEOUT)) == [blocked]
    assert blocked.result() == 7
    # Zero timeout with everything already finished yields them all.
    assert set(cf.as_completed([first, blocked], timeout=0)) == {first, blocked}


# -- Future semantics ------------------------------------------------------------------------


def test_future_states(method: str, executor: BaseExecutor, gate: Gate) -> None:
    running = occupy_all(executor, gate)
    queued = executor.submit(abs, -3)
    assert not queued.done() and not queued.running()
    wait_until(lambda: all(f.running() for f in running), "running() to be true")
    assert not running[0].cancel() and not running[0].cancelled()
    assert queued.cancel() and queued.cancelled() and queued.done()
    with pytest.raises(cf.CancelledError):
        queued.result(0)
    with pytest.raises(cf.CancelledError):
        queued.exception(0)
    with pytest.raises(TimeoutError):
        running[0].result(timeout=0.05)
    with pytest.raises(TimeoutError):
        running[0].exception(timeout=0.05)
    gate.open()
    assert running[0].result(TIMEOUT) is None and running[0].done()
    assert not running[0].running() and not running[0].cancel()


def test_done_callbacks(
    executor: BaseExecutor, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[cf.Future[Any]] = []
    called = threading.Event()

    def record(f: cf.Future[Any]) -> None:
        calls.append(f)
        called.set()

    blocked = executor.submit(wait_for_gate, gate.path, None, 5)
    blocked.add_done_callback(record)
    assert not calls
    gate.open()
    assert called.wait(TIMEOUT)
    assert calls == [blocked] and blocked.result() == 5

    finished = executor.submit(abs, -2)
    finished.result(TIMEOUT)
    finished.add_done_callback(record)  # already done: called at once
    assert calls == [blocked, finished]

    def broken(_: cf.Future[Any]) -> None:
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        finished.add_done_callback(broken)  # logged, not raised
    assert "callback bug" in caplog.text or "exception calling callback" in caplog.text


def test_smart_future_keeps_the_future_api(executor: BaseExecutor, gate: Gate) -> None:
    occupy_all(executor, gate)
    queued = SmartFuture(executor.submit(abs, -4))
    seen: list[SmartFuture[Any]] = []
    queued.add_done_callback(seen.append)
    assert queued.cancel() and queued.cancelled() and queued.done()
    assert seen == [queued]
    with pytest.raises(cf.CancelledError):
        queued.result()
    gate.open()
    value = SmartFuture(executor.submit(abs, -4))
    assert value.result(TIMEOUT) == 4 and value.exception() is None and not value.running()
    failing = SmartFuture(executor.submit(fail_with, "sf"))
    assert isinstance(failing.exception(TIMEOUT), ValueError)
    assert cf.wait([value.future, failing.future], timeout=TIMEOUT).not_done == set()
