"""The one call runner and codec of every worker: run a call, and encode what it produced
(its value, or why it failed).

Every worker runtime runs its calls with :func:`run_call`, which encodes their outcome
here, and every controller decodes it with :mod:`parallelize._outcome_errors`: PROCESS
workers (``_process/_worker.py``) and REMOTE slots, over SSH or in the embedded pool
(``remote/worker.py``). So the same failure gives the same exception type and message
whichever method ran the call.

This module runs in workers on other machines, where the project is not installed: links
ship its source with the agent's (``remote/_agent_boot.py``). Hence it imports only the
standard library at the top, and cloudpickle only when plain pickle cannot do.

Outcomes:

* a value: :func:`dumps_value` (plain pickle, which is fast, then cloudpickle for what it
  refuses: classes and functions the parent sent by value, lambdas);
* a failure: :func:`dumps_failure`, a pickled tuple whose first item says which kind:

  - ``("raised", stage, exception_bytes_or_None, type_name, message, traceback_text)``:
    the call (or loading its function and arguments: *stage*) raised. The exception is
    pickled on its own, so an exception that does not pickle (or does not unpickle
    where it arrives) still arrives as its type name, message and traceback;
  - ``("unpicklable_result", type_name, detail)``: the call returned a value that could
    not be pickled to be sent back (also when pickling it raised ``SystemExit``).

Nothing here raises, whatever the user's objects do when pickled or printed: a worker
must survive any call.

What stays with each runtime is transport: how tasks and results are framed, where the
arguments' bytes come from (PROCESS maps shared-memory segments, agents' slots resolve
blobs: both through the ``load_args`` they give :func:`run_call`), how a value is pickled
to travel (``dump``), cancellation, compression and memory recycling.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

__all__ = [
    "RAISED",
    "STAGE_LOADING",
    "STAGE_RUNNING",
    "UNPICKLABLE_RESULT",
    "cloudpickle_dumps",
    "dumps_failure",
    "dumps_unpicklable_result",
    "dumps_value",
    "run_call",
    "type_name",
]

RAISED = "raised"
UNPICKLABLE_RESULT = "unpicklable_result"
STAGE_LOADING = "loading the function and its arguments"
STAGE_RUNNING = "running the call"
_PROTOCOL = 5

_Key = TypeVar("_Key")
_Data = TypeVar("_Data")
_Payload = TypeVar("_Payload")


def cloudpickle_dumps(obj: Any, **options: Any) -> bytes:
    import cloudpickle

    options.setdefault("protocol", _PROTOCOL)
    return cloudpickle.dumps(obj, **options)  # type: ignore[no-any-return]


def dumps_value(obj: Any) -> bytes:
    """Plain pickle, and cloudpickle for what plain pickle refuses. Raises what they raise."""
    try:
        return pickle.dumps(obj, protocol=_PROTOCOL)
    except Exception:
        return cloudpickle_dumps(obj)


def type_name(tp: type) -> str:
    module = getattr(tp, "__module__", None)
    if module in (None, "builtins", "__main__"):
        return str(tp.__qualname__)
    return f"{module}.{tp.__qualname__}"


def dumps_failure(exc: BaseException, stage: str, skip_frames: int = 0) -> bytes:
    """The failure of a call that raised *exc* while at *stage*; *skip_frames*: the
    worker's own frames at the top of the traceback, left out of the text."""
    try:
        return _dumps_failure(exc, stage, skip_frames)
    except BaseException:  # a __str__ or __repr__ that raises, even SystemExit
        return pickle.dumps(
            (
                RAISED,
                stage,
                None,
                _safe_type_name(exc),
                "<the exception could not be formatted>",
                "",
            ),
            protocol=_PROTOCOL,
        )


def _dumps_failure(exc: BaseException, stage: str, skip_frames: int) -> bytes:
    import traceback

    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    text = "".join(lines[1:] if tb is not None else lines)  # without "Traceback (most ...":
    try:
        message = str(exc)
    except BaseException:
        message = "<str() of the exception failed>"
    # The traceback travels as text; the chain and frames would only make pickling fail.
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    try:
        exc_bytes: bytes | None = dumps_value(exc)
    except BaseException:  # a SystemExit from a __reduce__ must not end the worker
        exc_bytes = None
    return pickle.dumps(
        (RAISED, stage, exc_bytes, type_name(type(exc)), message, text), protocol=_PROTOCOL
    )


def dumps_unpicklable_result(value: Any, exc: BaseException) -> bytes:
    """The failure of a call whose return *value* could not be pickled (with *exc*)."""
    try:
        detail = f"{type(exc).__name__}: {exc}"
    except BaseException:
        detail = type(exc).__name__
    return pickle.dumps((UNPICKLABLE_RESULT, _safe_type_name(value), detail), protocol=_PROTOCOL)


def _safe_type_name(obj: Any) -> str:
    try:
        return type_name(type(obj))
    except BaseException:
        return "<unknown type>"


def run_call(
    functions: dict[_Key, Callable[..., Any]],
    function_bytes: dict[_Key, bytes],
    fn_id: _Key,
    load_args: Callable[[_Data], tuple[tuple[Any, ...], dict[str, Any]]],
    args_data: _Data,
    dump: Callable[[Any], _Payload],
) -> tuple[_Payload | None, bytes | None, float]:
    """Run one call in a worker -> ``(payload, failure, duration)``, exactly one of the
    first two not None.

    The function is ``functions[fn_id]``, or else unpickled from ``function_bytes[fn_id]``
    and kept in *functions*: both caches are the caller's, which fills and evicts them. Its
    bytes stay until it loads, so a function that fails to load fails every call to it
    with the same error (and not the worker). The arguments are ``load_args(args_data)``,
    an ``(args, kwargs)`` pair. *duration* times the call alone (0.0 if it never started).

    On success *payload* is ``dump(value)``; when *dump* raises (anything, ``SystemExit``
    included), *failure* encodes the unpicklable result instead. When loading or the call
    raises, *failure* encodes the exception and the stage. Nothing escapes: the worker
    survives any call.

    On the hot path of every worker (PROCESS's no-op round trips): no allocation but the
    returned tuple, one frame between the worker's loop and the call.
    """
    started = 0.0
    try:
        fn = functions.get(fn_id)
        if fn is None:
            fn = functions[fn_id] = pickle.loads(function_bytes[fn_id])
        args, kwargs = load_args(args_data)
        started = perf_counter()
        value = fn(*args, **kwargs)
        duration = perf_counter() - started
    except BaseException as exc:  # SystemExit/KeyboardInterrupt too: the worker survives
        if started:  # the traceback starts at the call: this frame is left out of its text
            return None, dumps_failure(exc, STAGE_RUNNING, 1), perf_counter() - started
        return None, dumps_failure(exc, STAGE_LOADING), 0.0
    del args, kwargs  # before the value is dumped: shared-memory arguments unmap now
    try:
        return dump(value), None, duration
    except BaseException as exc:  # SystemExit in a __reduce__ too: the worker survives
        return None, dumps_unpicklable_result(value, exc), duration
