"""The controller's half of :mod:`parallelize._outcome`: a failed call's exception.

One function for every method that runs calls in other processes, so that a call that
raises, cannot send its result back, or raises an exception that cannot travel, fails with
the same type and message under PROCESS and REMOTE; only *where* (a worker process, a
host) differs.
"""

from __future__ import annotations

import pickle
from typing import Any

from ._errors import ParallelizeError, PicklingError, attach_remote_traceback
from ._outcome import RAISED, UNPICKLABLE_RESULT

__all__ = ["failure_exception"]


def failure_exception(
    payload: bytes | memoryview, fn_name: str, where: str, host: str | None = None
) -> BaseException:
    """The exception for a failure payload of *fn_name*'s call, which ran in *where*
    ("worker process 123", "host 'gpu1'"); *host*: recorded for ``where_ran``."""
    try:
        record: Any = pickle.loads(payload)
        kind = record[0]
    except Exception as unreadable:
        error = ParallelizeError(
            f"{fn_name} failed in {where}, and its error could not be read here "
            f"({type(unreadable).__name__}: {unreadable})"
        )
        error.__cause__ = unreadable
        return error
    if kind == UNPICKLABLE_RESULT:
        _, type_name, detail = record
        return PicklingError(
            f"the result of {fn_name} could not be pickled to send it back from {where}: "
            f"a {type_name} ({detail}). Return picklable data."
        )
    if kind != RAISED:
        return ParallelizeError(f"{fn_name} failed in {where} with an unknown outcome {kind!r}")
    _, stage, exc_bytes, type_name, message, tb_text = record
    exc: Any = None
    # Every exception arrives as itself, SystemExit and KeyboardInterrupt too, as with
    # concurrent.futures (and THREAD); the worker survived.
    if exc_bytes is not None:
        try:
            exc = pickle.loads(exc_bytes)
        except Exception:  # pickled, but its class cannot be rebuilt here
            exc = None
    if not isinstance(exc, BaseException):
        exc = RuntimeError(
            f"{fn_name} raised {type_name}: {message} (the exception itself could not be "
            f"sent back from {where}: it is not picklable)"
        )
    return attach_remote_traceback(exc, f"Traceback on {where} while {stage}:\n{tb_text}", host)
