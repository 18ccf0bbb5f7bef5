"""Speculative backups of straggling Ray calls, and the call table they share with ``_ray``.

A heartbeat thread (``_engine_base``), only while calls are live, looks for a
straggler once no call waits for a CPU and one is free (the rules of
``_speculation``; a call's running time is counted from submit, run times are the
client-side spans of finished calls) and starts one copy of it per heartbeat:
pinned to another alive node with free CPU
(``NodeAffinitySchedulingStrategy(soft=False)``) on a multi-node cluster, a plain
second copy on one node. The original's node is not known to the driver, so on
several nodes the copy may land on it. The first copy to finish wins; ``_ray``
cancels the others with ``force=True``.

Kept apart from ``_ray`` (submission, completion, cancelling) by concern: this
layer only reads the call table and adds attempts to it, under ``_lock``.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._engine_base import EngineExecutor
from ._engine_future import EngineFuture
from ._speculation import Running, choose_backup

__all__ = ["Call", "RayBackups"]

logger = logging.getLogger("parallelize")
_ONE_NODE = "this node"  # the backup target name on a one-node cluster
_NO_NODES: frozenset[str] = frozenset()


@dataclass(eq=False)
class Call:
    """A call in flight (entries of ``_calls``; fields changed under ``_lock``)."""

    future: EngineFuture
    remote: Any  # the Ray remote function (None: run_call_spread with fn first)
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    submitted: float
    refs: list[Any] = field(default_factory=list)  # attempts: the original, then copies
    # Where its copies were pinned: a shared empty set until a copy is (most calls never).
    nodes: frozenset[str] = _NO_NODES
    live: int = 0  # attempts not finished
    backups: bool = True
    finished: bool = False
    ended: str = "cancelled"  # how attempts still running when it finished are recorded


class RayBackups(EngineExecutor):
    """The backup layer of :class:`RayExecutor` (its state is set up by ``_init_backups``)."""

    _calls: dict[int, Call]
    _remote: Any
    _durations: collections.deque[float]
    max_backups_per_call: int

    def _init_backups(self) -> None:
        self._cpus = 0.0
        self._nodes: list[str] = []
        self._cluster_checked = -1e9
        self._backups_started = 0
        self._backups_won = 0

    def _watch(self, call: Call, ref: Any, node: str | None) -> None:
        raise NotImplementedError  # hands a new attempt to the completion thread (_ray)

    def _kill(self, refs: list[Any]) -> None:
        raise NotImplementedError

    def _may_need_backup(self) -> bool:
        return any(c.backups for c in self._calls.values())

    def _consider_backup(self) -> None:
        import ray

        now = time.monotonic()
        if now - self._cluster_checked > 5.0:  # CPUs and nodes, refreshed every 5 s
            self._cpus = ray.cluster_resources().get("CPU", 0.0)  # type: ignore[no-untyped-call]
            alive = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
            self._nodes = [n["NodeID"] for n in alive]
            self._cluster_checked = now
        with self._lock:
            if len(self._calls) > self._cpus or len(self._durations) < 2:
                # Calls wait for a CPU (no backup is due then), or no run time is known
                # yet: asking Ray for its free CPUs would only load it.
                return
            live = list(self._calls.values())
            durations = list(self._durations)
        free = ray.available_resources().get("CPU", 0.0)  # type: ignore[no-untyped-call]
        if free < 1.0:
            return
        running = [
            Running(c.future.call_id, now - c.submitted, c.nodes, len(c.refs) - 1)
            for c in live
            if c.backups and not c.finished
        ]
        targets = self._nodes if len(self._nodes) > 1 else [_ONE_NODE]
        choice = choose_backup(
            running,
            durations,
            targets,
            pending=0,
            max_backups=self.max_backups_per_call,
            started=self._backups_started,
            submitted=self._stats.submitted,
        )
        if choice is not None:
            self._start_backup(*choice)

    def _start_backup(self, call_id: int, node: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        with self._lock:
            call = self._calls.get(call_id)
            if call is None or call.finished:
                return
            fn, args, kwargs, remote = call.fn, call.args, call.kwargs, call.remote
        options: dict[str, Any] = {}
        if node != _ONE_NODE:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        if remote is None:
            ref = self._remote.options(**options).remote(fn, *args, **kwargs)
        else:
            ref = remote.options(**options).remote(*args, **kwargs)
        with self._lock:
            late = self._calls.get(call_id) is not call  # finished meanwhile
            if not late:
                call.refs.append(ref)
                call.nodes = call.nodes | {node}
                call.live += 1
                self._backups_started += 1
        if late:
            self._kill([ref])
            return
        logger.info("%s: backup of call %d on %s", self.name, call_id, node)
        self._watch(call, ref, None if node == _ONE_NODE else node)
