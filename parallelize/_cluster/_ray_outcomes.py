"""What a finished Ray attempt means: the caller's error for Ray's, and the attempt's row.

Pure translations used by ``_ray``'s completion thread, kept apart from the call
table and the threads (``_ray``) by concern.
"""

from __future__ import annotations

from concurrent.futures import CancelledError
from typing import Any, TypeGuard

from .._errors import TaskLostError, attach_remote_traceback
from .._records import AttemptRow
from ._engine_base import poisoned_error
from ._remote_side import RECORD_LENGTH

__all__ = ["RawAttempt", "attempt_row", "caller_error", "is_lost", "is_record", "raw_attempt"]


def is_lost(exc: BaseException) -> bool:
    """Whether *exc* says the attempt was lost with its worker or node (not its own error)."""
    import ray.exceptions as rex

    return isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError))


def caller_error(
    call_id: int, executor: str, max_retries: int, exc: BaseException
) -> BaseException:
    """The exception the caller of call *call_id* sees for its attempt's error *exc*: the
    function's own exception with the worker's traceback, or ours for Ray's."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        return attach_remote_traceback(cause, str(exc))
    if isinstance(exc, (rex.TaskCancelledError, CancelledError)):
        return TaskLostError(f"call {call_id} was cancelled on the Ray cluster")
    if is_lost(exc):
        records = [("ray", 0.0, 0.0)] * (max_retries + 1)
        return poisoned_error(
            f"call {call_id} of {executor!r}",
            records,
            f"by Ray, max_retries={max_retries}; last: {type(exc).__name__}",
        )
    return exc


# An attempt as recorded when seen finished (cheap: one tuple on the completion thread);
# ``attempt_row`` builds its row when ``stats()`` asks: (call id, outcome, whether a
# backup, where the worker said it ran or None, the worker's wall-clock start and end,
# the client-side span (monotonic, from the executor's epoch), the node it was pinned to).
RawAttempt = tuple[int, str, bool, "str | None", float, float, float, float, "str | None"]


def raw_attempt(
    call_id: int,
    outcome: str,
    backup: bool,
    got: list[Any] | None,
    client_span: tuple[float, float],
    node: str | None,
) -> RawAttempt:
    """What to keep of an attempt: *got*, the task's record (see ``_remote_side``), if it
    returned one, without its value (which the caller may let go of)."""
    if is_record(got):
        return (call_id, outcome, backup, got[1], got[2], got[3], *client_span, node)
    return (call_id, outcome, backup, None, 0.0, 0.0, *client_span, node)


def is_record(got: Any) -> TypeGuard[list[Any]]:
    """Whether *got*, what an attempt's task returned, is a record (see ``_remote_side``)."""
    return type(got) is list and len(got) == RECORD_LENGTH


def attempt_row(raw: RawAttempt, epoch_wall: float) -> AttemptRow:
    """The row of an attempt. One that returned has the worker's record: its row names
    the worker (``node/pid``) and spans the run as the worker timed it (wall clock, from
    *epoch_wall*). One that never returned (failed, lost with its worker, killed) has
    only the client-side span (submitted -> seen finished), on the node a copy was
    pinned to, else on "ray"."""
    call_id, outcome, backup, where, start, end, client_start, client_end, node = raw
    if where is not None:
        host, slot = where.split("/", 1)[0], where
        start, end = start - epoch_wall, end - epoch_wall
    else:
        host = slot = node or "ray"
        start, end = client_start, client_end
    return AttemptRow(call_id, 0, host, slot, start, end, outcome, backup)
