"""What a finished Ray attempt means: the caller's error for Ray's, and the attempt's row.

Pure translations used by ``_ray``'s completion thread, kept apart from the call
table and the threads (``_ray``) by concern.
"""

from __future__ import annotations

from concurrent.futures import CancelledError

from .._errors import TaskLostError, attach_remote_traceback
from .._records import AttemptRow
from ._engine_base import poisoned_error
from ._remote_side import Recorded

__all__ = ["attempt_row", "caller_error", "is_lost"]


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


def attempt_row(
    call_id: int,
    outcome: str,
    backup: bool,
    got: Recorded | None,
    client_span: tuple[float, float],
    node: str | None,
    epoch_wall: float,
) -> AttemptRow:
    """The row of an attempt. One that returned has the worker's record (*got*): its row
    names the worker (``node/pid``) and spans the run as the worker timed it (wall clock,
    from *epoch_wall*). One that never returned (failed, lost with its worker, killed)
    has only the client-side span (submitted -> seen finished), on the node a copy was
    pinned to, else on "ray"."""
    if type(got) is Recorded:
        host, slot = got.where.split("/", 1)[0], got.where
        start, end = got.start - epoch_wall, got.end - epoch_wall
    else:
        host = slot = node or "ray"
        start, end = client_span
    return AttemptRow(call_id, 0, host, slot, start, end, outcome, backup)
