"""The exceptions of parallelize, one family rooted in :class:`ParallelizeError`.

::

    ParallelizeError                      anything that went wrong in parallelize itself
    ├── PicklingError                     a call could not be serialised (also TypeError)
    ├── TaskTimeoutError                  a call ran past its ``timeout=`` (also TimeoutError)
    ├── TaskLostError                     a call's worker or attempt was lost (also RuntimeError)
    │   ├── WorkerDiedError               the process running it exited (PROCESS; REMOTE poisoned)
    │   └── PoisonedCallError             REMOTE/cluster: every attempt was lost (``attempts``)
    └── (in ``remote``) HostUnavailableError, PoolConfigError

Exceptions raised by the user's own function are never wrapped: they arrive with their
own type, with the worker's traceback attached as ``__cause__`` (:class:`RemoteTraceback`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AttemptRecord",
    "ParallelizeError",
    "PicklingError",
    "PoisonedCallError",
    "RemoteTraceback",
    "TaskLostError",
    "TaskTimeoutError",
    "WorkerDiedError",
    "attach_remote_traceback",
    "where_ran",
]


class ParallelizeError(Exception):
    """Base of every error raised by parallelize itself (not by the user's function)."""


class PicklingError(ParallelizeError, pickle.PicklingError, TypeError):
    """A call could not be serialised to be sent to a worker process or host.

    Raised at call time, naming the function and the argument (or the
    function itself) that could not be pickled.
    """


class TaskTimeoutError(ParallelizeError, TimeoutError):
    """A call ran longer than its ``timeout=`` and was stopped.

    ``function`` names the call, ``timeout`` is the limit in seconds and ``where``
    says where it ran (``"thread"``, ``"process worker 12345"``, ``"host web1"``).
    PROCESS and REMOTE killed the process that ran it (``stopped``); a THREAD call runs
    on (``stopped`` is False).
    """

    def __init__(self, function: str, timeout: float, where: str, *, stopped: bool = True) -> None:
        outcome = (
            " and was stopped"
            if stopped
            else "; a thread cannot be stopped, so the call runs on in the background "
            "(its result is dropped, and interpreter exit does not wait for it)"
        )
        super().__init__(
            f"{function} ran longer than its timeout of {timeout:g} s on {where}{outcome}"
        )
        self.function = function
        self.timeout = timeout
        self.where = where
        self.stopped = stopped

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_timeout, (self.function, self.timeout, self.where, self.stopped))


def _rebuild_timeout(function: str, timeout: float, where: str, stopped: bool) -> TaskTimeoutError:
    return TaskTimeoutError(function, timeout, where, stopped=stopped)


class TaskLostError(ParallelizeError, RuntimeError):
    """A call did not produce a result because the infrastructure running it failed:
    its worker process died, its host went away, or its executor was torn down."""


class WorkerDiedError(TaskLostError):
    """The worker process running a task exited before returning its result.

    Only the task that was running fails with this error; the pool replaces
    the worker and keeps serving other tasks.
    """


@dataclass(frozen=True)
class AttemptRecord:
    """One lost attempt of a call: where it ran, why it was lost, how long it ran."""

    host: str
    reason: str
    duration: float | None = None

    def __str__(self) -> str:
        took = f" after {self.duration:.3g} s" if self.duration is not None else ""
        return f"on {self.host}{took}: {self.reason}"


class PoisonedCallError(TaskLostError):
    """A call was given up after every allowed attempt was lost to an infrastructure
    failure (most likely the call itself kills its worker: a segfault, ``os._exit``,
    running out of memory). ``attempts`` lists host, reason and duration of each."""

    def __init__(self, message: str, attempts: tuple[AttemptRecord, ...] = ()) -> None:
        super().__init__(message)
        self.attempts = tuple(attempts)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.attempts))


class RemoteTraceback(Exception):
    """Carries the formatted traceback of an exception raised in another process.

    Attached as ``__cause__`` of the re-raised exception so that the usual
    traceback printout shows where the task failed in the worker.
    """

    def __init__(self, tb: str, host: str | None = None) -> None:
        super().__init__(tb)
        self.tb = tb
        self.host = host  # where it ran, when that was another machine (REMOTE)

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def attach_remote_traceback(exc: BaseException, tb: str, host: str | None = None) -> BaseException:
    """Set ``exc.__cause__`` to a :class:`RemoteTraceback` holding *tb*; return *exc*."""
    exc.__cause__ = RemoteTraceback(tb, host)
    return exc


def where_ran(exc: BaseException) -> str | None:
    """The host a failed call ran on, when its executor recorded one (REMOTE)."""
    cause = exc.__cause__
    return cause.host if isinstance(cause, RemoteTraceback) else None
