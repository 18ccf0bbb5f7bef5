"""Turning a worker's result frames into future outcomes (values, exceptions), no lock held."""

from __future__ import annotations

import os
import pickle
from typing import Any

from .._outcome_errors import failure_exception
from .._pickling import callable_name
from .._stats import Outcome, TaskStats
from . import _shm
from ._dispatch import ProcessFuture
from ._handles import Task, complete_future
from ._protocol import KIND_ERROR, KIND_OK, KIND_OK_SHM, KIND_SKIPPED
from ._run_handle import RunHandle

__all__ = ["Completion", "complete"]

Completion = tuple[Task, int, float, bytes, Any]


def complete(
    stats: TaskStats,
    completions: list[Completion],
    where: str = "a worker process",
    host: str | None = None,
) -> None:
    """Complete the futures of answered tasks (no lock held); *where* they ran and the
    *host* they ran as (REMOTE's embedded pool), for errors."""
    # Stats are recorded before the future completes, so that a caller woken by
    # the result sees them.
    for task, kind, duration, payload, segment in completions:
        task.release()  # the worker is done with the arguments
        if task.discard or kind == KIND_SKIPPED:
            # Cancelled (also skipped by the worker) or timed out: counted when its future
            # was found cancelled or timed out, never reported.
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
            error = failure_exception(payload, callable_name(task.fn), where, host)
        else:  # pragma: no cover - protocol bug
            error = RuntimeError(f"unknown result kind {kind}")
        stats.task_finished(Outcome.SUCCEEDED if error is None else Outcome.FAILED, duration)
        if isinstance(task.future, (ProcessFuture, RunHandle)):
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
