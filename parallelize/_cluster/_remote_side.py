"""Code that runs inside the cluster (Dask workers and scheduler, Ray workers).

They are pickled by reference, so the cluster's Python environment needs
parallelize installed (as it needs every package the user's functions use);
they import nothing else from it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import time
from collections.abc import Callable
from typing import Any


def run_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Dask: run one call. Arguments travel as a tuple and a dict so that every user keyword
    (even ``key``, ``workers``, ``priority``, ``retries``) reaches *fn* untouched."""
    return fn(*args, **kwargs)


def _ray_where() -> str:
    """On a Ray worker: ``node/pid`` (the node id's first 8 hex digits), asked once per
    worker process (a worker never moves)."""
    global _WHERE
    if _WHERE is None:
        import ray

        node = ray.get_runtime_context().get_node_id()
        _WHERE = f"{node[:8]}/pid {os.getpid()}"
    return _WHERE


_WHERE: str | None = None


# Ray: a call's task returns one object, its record: ``[value, where, start, end]``, the
# value with where (``node/pid``) and when (wall-clock seconds) the worker ran it. One
# object, not two (``num_returns=2``): a second object per task cost the cluster 5-10% of
# a no-op call. A list, not a tuple or a NamedTuple: Ray packs lists of plain values with
# msgpack and pickles the others, and a pickled record cost the driver 24 us per call to
# read back instead of 11 (2,000 no-op calls, Ray 2.60).
RECORD_LENGTH = 4

# Ray: which arguments of a call are chained calls (SmartFutures of the same executor,
# handed to Ray as their ObjectRefs, which Ray resolves on the worker to their records):
# positions in ``args`` and names in ``kwargs``, told by the driver, which knows them (a
# record cannot be told from a user's list by its looks).
Chained = tuple[tuple[int, ...], tuple[str, ...]]


def _values(
    chained: Chained | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """*args* and *kwargs* with the records of the *chained* calls replaced by their values."""
    if chained is None:
        return args, kwargs
    positions, names = chained
    if positions:
        listed = list(args)
        for i in positions:
            listed[i] = listed[i][0]
        args = tuple(listed)
    if names:
        kwargs = {k: v[0] if k in names else v for k, v in kwargs.items()}
    return args, kwargs


def recorded(fn: Callable[..., Any]) -> Callable[..., list[Any]]:
    """Ray: *fn* run so that its task returns its record (see ``RECORD_LENGTH``). It keeps
    *fn*'s signature (``functools.wraps``), so Ray checks the arguments at submit."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> list[Any]:
        start = time.time()
        value = fn(*args, **kwargs)
        return [value, _ray_where(), start, time.time()]

    return run


def recorded_chained(fn: Callable[..., Any]) -> Callable[..., list[Any]]:
    """Ray: like ``recorded``, for calls with chained arguments: the first argument, a
    :data:`Chained` (positional-only, so no user keyword collides with it), says which."""

    def run(chained: Chained, /, *args: Any, **kwargs: Any) -> list[Any]:
        args, kwargs = _values(chained, args, kwargs)
        start = time.time()
        value = fn(*args, **kwargs)
        return [value, _ray_where(), start, time.time()]

    for name in ("__module__", "__name__", "__qualname__", "__doc__"):  # Ray names tasks so
        with contextlib.suppress(AttributeError):
            setattr(run, name, getattr(fn, name))
    # Ray checks a call's arguments at submit against this signature: *fn*'s own, behind the
    # marker (a bad call fails in the caller, as it does without chained arguments).
    with contextlib.suppress(TypeError, ValueError):  # no signature to read (a builtin)
        signature = inspect.signature(fn)
        marker = inspect.Parameter("_parallelize_chained", inspect.Parameter.POSITIONAL_ONLY)
        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[marker, *signature.parameters.values()]
        )
    return run


def run_call_spread(
    fn: Callable[..., Any], chained: Chained | None, /, *args: Any, **kwargs: Any
) -> list[Any]:
    """Ray: run one call of a callable that is not a plain function (see ``recorded``).
    Ray resolves only top-level ObjectRef arguments, so they are spread; *fn* and
    *chained* are positional-only so no user keyword can collide with them."""
    args, kwargs = _values(chained, args, kwargs)
    start = time.time()
    value = fn(*args, **kwargs)
    return [value, _ray_where(), start, time.time()]


def lost_attempts(dask_scheduler: Any, key: str) -> list[tuple[str, float, float]]:
    """On the Dask scheduler: ``(worker, start, end)`` of each attempt of *key* lost with its
    worker, from the task's transition story and the scheduler's remove-worker events."""
    starts = [t.timestamp for t in dask_scheduler.story(key) if t.finish == "processing"]
    removals = []
    for stamp, msg in dask_scheduler.get_events("all"):
        if (
            isinstance(msg, dict)
            and msg.get("action") == "remove-worker"
            and key in (msg.get("processing-tasks") or ())
        ):
            removals.append((str(msg.get("worker", "?")), float(stamp)))
    attempts = []
    for worker, end in removals:
        begun = [s for s in starts if s <= end]
        attempts.append((worker, begun[-1] if begun else end, end))
    return attempts


def executing_keys(dask_worker: Any) -> list[str]:
    """On a Dask worker: the keys of the tasks its threads are running now (not those
    assigned to it and waiting for a thread, which the scheduler lists as processing too)."""
    return [str(ts.key) for ts in dask_worker.state.executing]
