"""Exceptions raised by parallelize and helpers to carry remote tracebacks."""

from __future__ import annotations

import pickle

__all__ = ["PicklingError", "RemoteTraceback", "WorkerDiedError", "attach_remote_traceback"]


class PicklingError(pickle.PicklingError, TypeError):
    """A call could not be serialised to be sent to a worker process or host.

    Raised at call time, naming the function and the argument (or the
    function itself) that could not be pickled.
    """


class WorkerDiedError(RuntimeError):
    """The worker process running a task exited before returning its result.

    Only the task that was running fails with this error; the pool replaces
    the worker and keeps serving other tasks.
    """


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
