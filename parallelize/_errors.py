"""The exceptions of parallelize, one family rooted in :class:`ParallelizeError`.

::

    ParallelizeError                      anything that went wrong in parallelize itself
    ├── PicklingError                     a call could not be serialised (also TypeError)
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
    "WorkerDiedError",
    "attach_remote_traceback",
]


class ParallelizeError(Exception):
    """Base of every error raised by parallelize itself (not by the user's function)."""


class PicklingError(ParallelizeError, pickle.PicklingError, TypeError):
    """A call could not be serialised to be sent to a worker process or host.

    Raised at call time, naming the function and the argument (or the
    function itself) that could not be pickled.
    """


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

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def attach_remote_traceback(exc: BaseException, tb: str) -> BaseException:
    """Set ``exc.__cause__`` to a :class:`RemoteTraceback` holding *tb*; return *exc*."""
    exc.__cause__ = RemoteTraceback(tb)
    return exc
