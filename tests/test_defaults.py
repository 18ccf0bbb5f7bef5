from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import parallelize as par
from parallelize import Method, ThreadExecutor, parallelize

TIMEOUT = 30.0


def test_default_executors_are_created_lazily_and_reused() -> None:
    from parallelize import _defaults

    par.shutdown_default_executors()
    assert Method.THREAD not in _defaults._executors
    first = par.default_executor(Method.THREAD)
    assert isinstance(first, ThreadExecutor)
    assert par.default_executor("thread") is first


def test_a_shut_down_default_executor_is_recreated() -> None:
    first = par.default_executor(Method.THREAD)
    first.shutdown()
    second = par.default_executor(Method.THREAD)
    assert second is not first
    assert parallelize(lambda: 5)().result(TIMEOUT) == 5


def test_configure_sets_sizes_and_validates() -> None:
    par.configure(thread_workers=3, process_workers=1)
    assert par.default_executor(Method.THREAD).max_workers == 3  # type: ignore[attr-defined]
    assert par.default_executor(Method.PROCESS).max_workers == 1  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="thread_workers must be a positive integer"):
        par.configure(thread_workers=0)


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    par.shutdown_default_executors()
    monkeypatch.setenv("PARALLELIZE_THREAD_WORKERS", "5")
    assert par.default_executor(Method.THREAD).max_workers == 5  # type: ignore[attr-defined]
    par.shutdown_default_executors()
    monkeypatch.setenv("PARALLELIZE_THREAD_WORKERS", "many")
    with pytest.raises(ValueError, match="PARALLELIZE_THREAD_WORKERS='many'"):
        par.default_executor(Method.THREAD)


def _run_script(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def test_queued_work_finishes_at_interpreter_exit() -> None:
    proc = _run_script(
        """
        import os
        from parallelize import parallelize, Method

        @parallelize
        def show(i):
            os.write(1, f"thread {i}\\n".encode())  # one write: lines cannot interleave

        @parallelize(method=Method.PROCESS)
        def compute(i):
            return i * i

        futures = [show(i) for i in range(20)]
        results = [compute(i) for i in range(5)]
        print("squares", [int(r) for r in results], flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("thread ") == 20
    assert "squares [0, 1, 4, 9, 16]" in proc.stdout


def test_default_executors_survive_fork() -> None:
    proc = _run_script(
        """
        import os
        from parallelize import parallelize, Method

        @parallelize
        def double(x):
            return 2 * x

        @parallelize(method=Method.PROCESS)
        def triple(x):
            return 3 * x

        assert double(1).result(30) == 2 and triple(1).result(30) == 3
        pid = os.fork()
        if pid == 0:
            ok = double(4).result(30) == 8 and triple(4).result(30) == 12
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert double(5).result(30) == 10 and triple(5).result(30) == 15
        print("fork ok", flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "fork ok" in proc.stdout
