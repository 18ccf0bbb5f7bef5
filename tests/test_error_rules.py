"""One rule for every method: how a task's exceptions and results come back.

* An exception a task raises arrives as itself, ``SystemExit`` and
  ``KeyboardInterrupt`` included (as with concurrent.futures); the worker
  survives.
* A result that cannot be pickled (also when pickling it raises
  ``SystemExit``) fails the call with ``parallelize.PicklingError`` under
  PROCESS and REMOTE; THREAD never pickles, so it returns the object.
* An exception that cannot be pickled arrives as a ``RuntimeError`` naming its
  type and message (THREAD: as itself).
* A call that kills its worker process fails with a ``TaskLostError``: PROCESS
  says ``WorkerDiedError``; REMOTE retries it elsewhere and then gives up with
  ``PoisonedCallError``, listing every attempt.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from parallelize import (
    PicklingError,
    PoisonedCallError,
    ProcessExecutor,
    TaskLostError,
    ThreadExecutor,
    WorkerDiedError,
)

# REMOTE slots do not share our sys.path: send this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class ExitWhilePickled:
    def __reduce__(self) -> Any:
        raise SystemExit(7)


class Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class CustomBase(BaseException):
    pass


def exit_with(code: int) -> None:
    raise SystemExit(code)


def raise_base() -> None:
    raise CustomBase("custom")


def raise_unpicklable() -> None:
    raise Unpicklable("with a lock")


def return_exit_while_pickled() -> ExitWhilePickled:
    return ExitWhilePickled()


def return_lock() -> Any:
    return threading.Lock()


def pid() -> int:
    return os.getpid()


def refuse_to_load(reason: str) -> None:
    raise LookupError(reason)


class FailsToLoad:
    """A callable that pickles, but does not unpickle where it runs."""

    def __reduce__(self) -> Any:
        return (refuse_to_load, ("not loadable here",))

    def __call__(self) -> None:
        pass


def kill_own_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(params=["thread", "process", "remote"])
def executor(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Executor]]:
    method = request.param
    ex: Executor
    if method == "thread":
        ex = ThreadExecutor(1)
    elif method == "process":
        ex = ProcessExecutor(1)
    else:
        monkeypatch.delenv("PARALLELIZE_POOL_FILE", raising=False)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
        from remote import RemoteExecutor

        ex = RemoteExecutor()  # no pool file: the embedded pool of local agents
    try:
        yield method, ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_one_rule_for_exceptions_and_results(executor: tuple[str, Executor]) -> None:
    method, ex = executor
    before = ex.submit(pid).result(timeout=60)

    with pytest.raises(SystemExit) as exited:
        ex.submit(exit_with, 3).result(timeout=60)
    assert exited.value.code == 3

    with pytest.raises(CustomBase, match="custom") as raised:
        ex.submit(raise_base).result(timeout=60)
    if method != "thread":
        # The worker's traceback, with this file's name and the source line, although
        # the function was sent by value (this module is registered so).
        remote_tb = str(raised.value.__cause__)
        assert "test_error_rules.py" in remote_tb, remote_tb
        assert 'raise CustomBase("custom")' in remote_tb, remote_tb

    if method == "thread":
        assert isinstance(ex.submit(return_exit_while_pickled).result(), ExitWhilePickled)
        assert ex.submit(return_lock).result() is not None
        with pytest.raises(Unpicklable):
            ex.submit(raise_unpicklable).result()
    else:
        with pytest.raises(PicklingError, match="ExitWhilePickled"):
            ex.submit(return_exit_while_pickled).result(timeout=60)
        with pytest.raises(PicklingError, match="lock"):
            ex.submit(return_lock).result(timeout=60)
        with pytest.raises(RuntimeError, match=r"Unpicklable.*with a lock"):
            ex.submit(raise_unpicklable).result(timeout=60)

    # The worker (or slot) survived all of that: the same process still serves.
    assert ex.submit(pid).result(timeout=60) == before


def _failure(ex: Executor, fn: Any) -> tuple[type[BaseException], str, str]:
    """(type, message with the place it ran blanked, traceback header's stage)."""
    exc = ex.submit(fn).exception(timeout=60)
    assert exc is not None
    message = str(exc)
    for where in ("host 'local'", "worker process "):
        if where in message:
            head, _, tail = message.partition(where)
            message = head + "<where>" + tail.lstrip("0123456789")
    cause = exc.__cause__
    stage = getattr(cause, "tb", "").partition("\n")[0].rpartition(" while ")[2]
    return type(exc), message, stage


def test_same_failure_same_error_under_process_and_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One outcome codec (parallelize/_outcome.py) for every worker runtime: the same type,
    the same message (but for where it ran) and the same stage, whichever method ran it."""
    monkeypatch.delenv("PARALLELIZE_POOL_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    from remote import RemoteExecutor
    from remote._executor import default_link_factory
    from remote._pool_config import embedded_pool

    # The embedded pool runs on PROCESS workers; an agent's slots (what SSH hosts run) are
    # the other runtime: a local agent over pipes stands in for them here.
    agents = functools.partial(default_link_factory, process_workers=False)
    cases = [raise_base, raise_unpicklable, return_lock, return_exit_while_pickled]
    with (
        ProcessExecutor(1) as process,
        RemoteExecutor() as embedded,
        RemoteExecutor(list(embedded_pool(1).hosts), link_factory=agents) as agent,
    ):
        for fn in cases:
            expected = _failure(process, fn)
            assert _failure(embedded, fn) == expected, fn.__name__
            assert _failure(agent, fn) == expected, fn.__name__


def test_a_function_that_fails_to_load_fails_each_call_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call runner keeps a function's bytes until it loads: each call to a function that
    does not load fails at the loading stage with the same error, in every runtime, and the
    worker keeps serving (an agent's slot gets the bytes only with the first call)."""
    monkeypatch.delenv("PARALLELIZE_POOL_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    from remote import RemoteExecutor
    from remote._executor import default_link_factory
    from remote._pool_config import embedded_pool

    agents = functools.partial(default_link_factory, process_workers=False)
    fn = FailsToLoad()
    with (
        ProcessExecutor(1) as process,
        RemoteExecutor() as embedded,
        RemoteExecutor(list(embedded_pool(1).hosts), link_factory=agents) as agent,
    ):
        expected = _failure(process, fn)
        assert expected[:2] == (LookupError, "not loadable here"), expected
        assert expected[2].startswith("loading the function and its arguments"), expected
        for ex in (process, embedded, agent):
            before = ex.submit(pid).result(timeout=60)
            for _ in range(2):
                assert _failure(ex, fn) == expected
            assert ex.submit(pid).result(timeout=60) == before


@pytest.mark.parametrize("method", ["process", "remote"])
def test_a_call_that_kills_its_worker_is_lost_the_same_way(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex: Executor
    if method == "process":
        ex = ProcessExecutor(1)
    else:
        monkeypatch.delenv("PARALLELIZE_POOL_FILE", raising=False)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
        from remote import RemoteExecutor

        ex = RemoteExecutor(max_attempts=2)  # two deaths are enough to show the retry
    try:
        with pytest.raises(TaskLostError) as lost:
            ex.submit(kill_own_process).result(timeout=120)
        if method == "process":
            assert isinstance(lost.value, WorkerDiedError), repr(lost.value)
        else:
            assert isinstance(lost.value, PoisonedCallError), repr(lost.value)
            assert len(lost.value.attempts) == 2, lost.value.attempts
            assert all(a.reason for a in lost.value.attempts), lost.value.attempts
        # The executor replaced the dead worker and still serves.
        assert ex.submit(pid).result(timeout=120) != os.getpid()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
