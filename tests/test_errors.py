"""The error family: one root, the right standard bases, attributes that survive pickling."""

from __future__ import annotations

import pickle
import warnings

import pytest

import parallelize
import remote
from parallelize import (
    AttemptRecord,
    ParallelizeError,
    PicklingError,
    PoisonedCallError,
    TaskLostError,
    WorkerDiedError,
)
from remote import HostErrorKind, HostUnavailableError, PoolConfigError


@pytest.mark.parametrize(
    ("cls", "std"),
    [
        (PicklingError, TypeError),
        (TaskLostError, RuntimeError),
        (WorkerDiedError, RuntimeError),
        (PoisonedCallError, RuntimeError),
        (HostUnavailableError, ConnectionError),
        (PoolConfigError, ValueError),
    ],
)
def test_one_root_and_standard_bases(cls: type[BaseException], std: type[BaseException]) -> None:
    assert issubclass(cls, ParallelizeError)
    assert issubclass(cls, std)
    assert cls.__name__.endswith("Error")


def test_lost_family() -> None:
    assert issubclass(WorkerDiedError, TaskLostError)
    assert issubclass(PoisonedCallError, TaskLostError)


def test_poisoned_call_error_keeps_its_attempts_through_pickle() -> None:
    attempts = (AttemptRecord("h1", "killed by signal SIGKILL", 0.5), AttemptRecord("h2", "x"))
    error = PoisonedCallError("f was given up", attempts)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, PoisonedCallError)
    assert copy.attempts == attempts
    assert str(copy) == "f was given up"
    assert str(attempts[0]) == "on h1 after 0.5 s: killed by signal SIGKILL"


def test_host_unavailable_error_kind() -> None:
    error = HostUnavailableError("host 'a': refused", HostErrorKind.AUTH, "a")
    assert error.permanent
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.host, str(copy)) == (HostErrorKind.AUTH, "a", "host 'a': refused")
    assert not HostUnavailableError("x", HostErrorKind.TIMEOUT).permanent
    assert not HostUnavailableError("x", HostErrorKind.LINK_LOST).permanent


def test_pool_config_error_fields() -> None:
    error = PoolConfigError("bad", path="/p.toml", entry="hosts.a", field="slots")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.entry, copy.field) == ("/p.toml", "hosts.a", "slots")


def test_remote_executor_exception_is_a_deprecated_alias() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alias = remote.RemoteExecutorException
    assert alias is ParallelizeError
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


def test_everything_is_exported() -> None:
    for name in ("ParallelizeError", "TaskLostError", "PoisonedCallError", "AttemptRecord"):
        assert name in parallelize.__all__
    for name in ("HostErrorKind", "HostUnavailableError", "PoolConfigError"):
        assert name in remote.__all__
