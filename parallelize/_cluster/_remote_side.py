"""Code that runs inside the cluster (Dask workers and scheduler, Ray workers).

They are pickled by reference, so the cluster's Python environment needs
parallelize installed (as it needs every package the user's functions use);
they import nothing else from it.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple


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


class Recorded(NamedTuple):
    """Ray: what a call's task returns, one object: the value, and where (``node/pid``)
    and when (wall-clock seconds) the worker ran it. One return object, not two
    (``num_returns=2``, value and record apart): a second object per task cost the
    cluster 5-10% of a no-op call. A chained call's task gets it as its argument (Ray
    resolves a top-level ObjectRef to the object) and runs the function on the value."""

    value: Any
    where: str
    start: float
    end: float


def _values(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """*args* and *kwargs* with the ``Recorded`` of chained calls replaced by their values."""
    if any(type(a) is Recorded for a in args):
        args = tuple(a.value if type(a) is Recorded else a for a in args)
    if kwargs and any(type(v) is Recorded for v in kwargs.values()):
        kwargs = {k: v.value if type(v) is Recorded else v for k, v in kwargs.items()}
    return args, kwargs


def recorded(fn: Callable[..., Any]) -> Callable[..., Recorded]:
    """Ray: *fn* run so that its task returns a :class:`Recorded` (the value with where and
    when it ran); arguments that are chained calls' ``Recorded`` are given as their values."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Recorded:
        args, kwargs = _values(args, kwargs)
        start = time.time()
        value = fn(*args, **kwargs)
        return Recorded(value, _ray_where(), start, time.time())

    return run


def run_call_spread(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Recorded:
    """Ray: run one call of a callable that is not a plain function (see ``recorded``).
    Ray resolves only top-level ObjectRef arguments, so they are spread; *fn* is
    positional-only so no user keyword can collide with it."""
    args, kwargs = _values(args, kwargs)
    start = time.time()
    value = fn(*args, **kwargs)
    return Recorded(value, _ray_where(), start, time.time())


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
