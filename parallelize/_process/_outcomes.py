"""Turning a worker's result frames into future outcomes (values, exceptions), no lock held."""

from __future__ import annotations

import os
import pickle
from typing import Any

from .._errors import attach_remote_traceback
from .._pickling import callable_name
from .._stats import Outcome, TaskStats
from . import _shm
from ._dispatch import ProcessFuture, unpicklable_result_error
from ._handles import Task, complete_future
from ._protocol import KIND_ERROR, KIND_OK, KIND_OK_SHM, KIND_UNPICKLABLE_RESULT

__all__ = ["Completion", "complete"]

Completion = tuple[Task, int, float, bytes, Any]


def complete(stats: TaskStats, completions: list[Completion]) -> None:
    """Complete the futures of answered tasks (no lock held)."""
    # Stats are recorded before the future completes, so that a caller woken by
    # the result sees them.
    for task, kind, duration, payload, segment in completions:
        task.release()  # the worker is done with the arguments
        if task.discard:  # cancelled or timed out: counted already, never reported
            if isinstance(segment, int):
                os.close(segment)
            continue
        value: Any = None
        error: BaseException | None = None
        if kind in (KIND_OK, KIND_OK_SHM):
            try:
                value = pickle.loads(payload) if kind == KIND_OK else _load_shared(payload, segment)
            except BaseException as exc:
                error = RuntimeError(
                    f"the result of {callable_name(task.fn)} could not be unpickled in "
                    f"the parent process ({type(exc).__name__}: {exc})"
                )
                error.__cause__ = exc
        elif kind == KIND_ERROR:
            error = _remote_exception(task, payload)
        elif kind == KIND_UNPICKLABLE_RESULT:
            type_name, detail = pickle.loads(payload)
            error = unpicklable_result_error(task, type_name, detail)
        else:  # pragma: no cover - protocol bug
            error = RuntimeError(f"unknown result kind {kind}")
        stats.task_finished(Outcome.SUCCEEDED if error is None else Outcome.FAILED, duration)
        if isinstance(task.future, ProcessFuture):
            task.future.run_seconds = duration
        complete_future(task.future, value, error)
        del value, error


def _load_shared(payload: bytes, segment: int | OSError) -> Any:
    if isinstance(segment, OSError):
        raise segment
    try:
        layout, start = _shm.decode_layout(payload)
        return _shm.loads_with_segment(memoryview(payload)[start:], segment, layout, writable=True)
    finally:
        os.close(segment)  # the mapping holds its own reference


def _remote_exception(task: Task, payload: bytes) -> BaseException:
    exc_bytes, type_name, message, tb, _is_base = pickle.loads(payload)
    exc: Any = None
    # Every exception arrives as itself, SystemExit and KeyboardInterrupt too,
    # as with concurrent.futures (and THREAD and REMOTE); the worker survived.
    if exc_bytes is not None:
        try:
            exc = pickle.loads(exc_bytes)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RuntimeError(
            f"{callable_name(task.fn)} raised {type_name}: {message} (the exception "
            "itself could not be sent back: it is not picklable)"
        )
    return attach_remote_traceback(exc, tb)
