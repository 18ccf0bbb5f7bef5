"""Regression tests for what the README promises (issue 8): pickling and tracebacks of
decorated functions, methods of ``__main__`` classes, executors at exit, failures that
are never silent, and the SmartFuture protocols (numpy, asyncio, hashing, conversions).

Behaviour that depends on being a script (``__main__``, interpreter exit) runs real
scripts in a subprocess.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import promise_helpers
import pytest

from parallelize import Method, PicklingError, ProcessExecutor, RemoteTraceback, parallelize
from parallelize._pickling import dumps_function
from smart_future import SmartFuture, wait_all, wait_any

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60


def run_script(tmp_path: Path, source: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    environment.pop("PARALLELIZE_POOL_FILE", None)
    environment["XDG_CONFIG_HOME"] = str(tmp_path / "no-config")
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
        cwd=tmp_path,
    )


def done(value: Any) -> SmartFuture[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return SmartFuture(future)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


# -- the decorator ---------------------------------------------------------------------


def test_decorated_functions_pickle_by_reference() -> None:
    for fn in (promise_helpers.square, promise_helpers.threaded_double):
        assert pickle.loads(pickle.dumps(fn)) is fn
    scaler = promise_helpers.Scaler(3)
    bound = pickle.loads(pickle.dumps(scaler.scale))
    assert bound(2).result(timeout=TIMEOUT) == 6


def test_module_level_function_travels_by_reference() -> None:
    data = dumps_function(promise_helpers.square.__wrapped__)
    assert len(data) < 150, len(data)  # by value it is several hundred bytes
    assert b"promise_helpers" in data


def test_decorated_function_runs_in_a_standard_process_pool() -> None:
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        assert pool.submit(promise_helpers.threaded_double, 21).result(timeout=TIMEOUT) == 42


def test_worker_traceback_shows_file_and_source_line() -> None:
    with pytest.raises(ValueError, match="on purpose") as caught:
        promise_helpers.fail(7).result(timeout=TIMEOUT)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "promise_helpers.py" in cause.tb
    assert 'raise ValueError(f"failing on purpose with {x}")' in cause.tb
    assert "<dynamic-code>" not in cause.tb


def test_generator_functions_are_rejected_at_decoration() -> None:
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    with pytest.raises(TypeError, match=r"generator function .*numbers.*return list"):
        parallelize(method=Method.PROCESS)(numbers)


def test_open_files_are_refused_as_arguments(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello")

    @parallelize(method=Method.PROCESS)
    def length(f: Any) -> int:
        return len(f.read())

    with (
        path.open() as handle,
        pytest.raises(PicklingError, match=r"argument 'f'.*open file .*data\.txt.*path"),
    ):
        length(handle)


def test_failed_dependency_exception_is_not_raised_again() -> None:
    with pytest.raises(ValueError) as first:
        promise_helpers.fail(1).result(timeout=TIMEOUT)
    frames_before = len(traceback.extract_tb(first.value.__traceback__))

    failed = promise_helpers.fail(2)
    chained = promise_helpers.square(failed)
    with pytest.raises(ValueError) as caught:
        chained.result(timeout=TIMEOUT)
    assert caught.value is failed.exception()
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert "on_dependency_done" not in names and "_resolve" not in names
    assert len(names) <= frames_before


def test_methods_and_notebook_style_code_of_main_run_under_process(tmp_path: Path) -> None:
    proc = run_script(
        tmp_path,
        """
        from parallelize import Method, parallelize

        class Model:
            scale = 3

            @parallelize(method=Method.PROCESS)
            def predict(self, x):
                return x * self.scale

            @parallelize(method=Method.PROCESS)
            @classmethod
            def create(cls, x):
                return x * cls.scale

            @parallelize(method=Method.PROCESS)
            @staticmethod
            def helper(x):
                return x + 1

        @parallelize(method=Method.PROCESS)
        def broken(x):
            return 1 / x

        m = Model()
        print(m.predict(2).result(), Model.create(3).result(), m.create(1).result(),
              Model.helper(4).result())
        try:
            broken(0).result()
        except ZeroDivisionError as exc:
            print(exc.__cause__)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    first, rest = proc.stdout.split("\n", 1)
    assert first == "6 9 3 5"
    assert "script.py" in rest and "return 1 / x" in rest, rest


def test_process_workers_have_a_recognisable_title() -> None:
    with ProcessExecutor(1, name="titled") as executor:
        executor.submit(abs, 1).result(timeout=TIMEOUT)
        (pid,) = executor.worker_pids()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
    assert cmdline == f"parallelize worker pool=titled parent={os.getpid()}".encode()


# -- executors at exit -------------------------------------------------------------------


def test_thread_executor_dropped_without_shutdown_runs_everything(tmp_path: Path) -> None:
    proc = run_script(
        tmp_path,
        """
        import gc, threading, time
        from parallelize import ThreadExecutor

        before = threading.active_count()
        ex = ThreadExecutor(1)
        futures = [ex.submit(time.sleep, 0.05) for _ in range(3)]
        del ex
        gc.collect()
        for f in futures:
            f.result(timeout=30)
        deadline = time.monotonic() + 30
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.01)
        print("all ran", threading.active_count() - before)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "all ran 0"


def test_exit_waits_for_thread_work_and_refuses_late_submissions(tmp_path: Path) -> None:
    proc = run_script(
        tmp_path,
        """
        import atexit, time
        from parallelize import ProcessExecutor, ThreadExecutor
        from remote import RemoteExecutor

        executors = [ThreadExecutor(1), ProcessExecutor(1), RemoteExecutor()]

        def late():
            for ex in executors:
                try:
                    ex.submit(abs, 1)
                except RuntimeError as exc:
                    print("refused:", type(ex).__name__, "shutting down" in str(exc), flush=True)

        atexit.register(late)

        def work(i):
            time.sleep(0.1)
            print("ran", i, flush=True)

        for i in range(3):
            executors[0].submit(work, i)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["ran 0", "ran 1", "ran 2"], proc.stdout
    assert lines[3:] == [
        "refused: ThreadExecutor True",
        "refused: ProcessExecutor True",
        "refused: RemoteExecutor True",
    ], proc.stdout


# -- failures are not silent ---------------------------------------------------------------


_FAILING_SCRIPT = """
import logging, sys
from parallelize import parallelize
from smart_future import wait_all

if "--log" in sys.argv[1:] or {log}:
    logging.basicConfig()

@parallelize
def check(x):
    if x % 2:
        raise ValueError(f"odd {{x}}")
    return x

done = wait_all([check(i) for i in range(6)])
print(sum(1 for f in done if f.exception() is not None))
"""


def test_failures_in_wait_all_are_summarised_without_logging(tmp_path: Path) -> None:
    proc = run_script(tmp_path, _FAILING_SCRIPT.format(log=False))
    assert proc.returncode == 0 and proc.stdout.strip() == "3"
    assert "3 of 6 tasks failed (first: ValueError: odd" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_configured_logging_shows_tracebacks_instead_of_the_summary(tmp_path: Path) -> None:
    proc = run_script(tmp_path, _FAILING_SCRIPT.format(log=True))
    assert proc.returncode == 0
    assert proc.stderr.count("Task failed") == 3 and "Traceback" in proc.stderr
    assert "tasks failed" not in proc.stderr


def test_result_timeout_says_what_is_pending(gate: threading.Event) -> None:
    @parallelize
    def blocked() -> None:
        gate.wait(TIMEOUT)

    future = blocked()
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 s: it is running"):
        future.result(timeout=0.05)


# -- SmartFuture protocols -----------------------------------------------------------------


def test_waits_remove_their_callbacks(gate: threading.Event) -> None:
    @parallelize
    def blocked() -> None:
        gate.wait(TIMEOUT)

    future = blocked()
    for _ in range(200):
        with pytest.raises(TimeoutError):
            list(wait_any([future], timeout=0))
        with pytest.raises(TimeoutError):
            wait_all([future], timeout=0)
    assert future.future._done_callbacks == []  # type: ignore[attr-defined]


def test_hashing_never_waits(gate: threading.Event) -> None:
    @parallelize
    def fetch(url: str) -> list[str]:
        gate.wait(TIMEOUT)
        return [url]

    urls = ["a", "b", "c"]
    by_future = {fetch(u): u for u in urls}  # returns at once: nothing waited for
    assert not any(f.done() for f in by_future)
    gate.set()
    assert sorted(by_future[f] for f in by_future) == urls
    assert sorted(f.result(timeout=TIMEOUT)[0] for f in by_future) == urls


def test_asyncio_gather_and_wait_accept_smart_futures() -> None:
    @parallelize
    def items(n: int) -> list[int]:
        if n < 0:
            raise ValueError("negative")
        return list(range(n))

    async def main() -> tuple[list[Any], int]:
        gathered = await asyncio.gather(items(2), items(-1), return_exceptions=True)
        finished, pending = await asyncio.wait([items(1), items(3)])
        assert not pending
        return gathered, sum(len(f.result()) for f in finished)

    gathered, total = asyncio.run(main())
    assert gathered[0] == [0, 1]
    assert isinstance(gathered[1], ValueError)
    assert total == 4


def test_numpy_sees_the_value() -> None:
    assert np.asarray(done(5)).dtype == np.asarray(5).dtype
    assert np.asarray(done(5)) == 5
    assert np.asarray(done("ab")).shape == ()
    assert np.asarray(done([[1, 2], [3, 4]])).shape == (2, 2)
    assert np.int64(done(3)) == 3
    assert (np.array([1, 2]) + done(np.array([10, 20]))).tolist() == [11, 22]


def test_numeric_conversions_follow_the_value() -> None:
    assert math.sqrt(done(4)) == 2.0
    assert "%d" % done(12) == "12"  # noqa: UP031 - the %-operator is what is tested
    uses = (
        lambda: math.sqrt(done("4")),
        lambda: "%d" % done("12"),  # noqa: UP031
        lambda: int(done("1")),
    )
    for use in uses:
        with pytest.raises(TypeError):
            use()
