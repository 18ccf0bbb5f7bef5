"""``Method.RAY``: calls run as Ray tasks.

(Over 400 lines: submitting, completing, cancelling and backing up a call share
one call table and its lock; split, each part would reach into the others.)

Each call is one Ray task of the function itself, run by ``recorded(fn)`` (a Ray
remote function made once per function; Ray has no reserved keywords in
``.remote()``, so every user keyword reaches it). Other callables (bound methods,
callable objects) run through ``run_call_spread(fn, *args, **kwargs)``, the
function positional-only. Both return two objects (``num_returns=2``): the value,
and where and when the call ran as the worker saw it (its node and pid, start and
end), which arrives in the same reply; ``stats()`` and the timeline are built from
these records, which stay Ray objects until ``stats()`` reads them all in one
``ray.get``.
The SmartFuture's inner future is completed by one completion thread that waits
for the live ObjectRefs in batches (``ray.wait`` every 10 ms on the oldest refs
and a slice of the others in turn, see ``_WINDOW``) and fetches the ready ones'
values in one ``ray.get``: a callback per ref would run Ray's callback thread
once per call, competing with the threads that submit. A SmartFuture of this executor
passed to another call is handed to Ray as its ObjectRef (top-level arguments
are resolved by Ray on the worker: the value stays in the cluster).

Failures: a worker that dies under a call is retried by Ray (``max_retries``);
when Ray gives up (``WorkerCrashedError``, ``NodeDiedError``...) the call fails
with :class:`PoisonedCallError`. Application exceptions are not retried
(``retry_exceptions=False``) and arrive as their own type with the worker's
traceback attached.

Cancelling (``SmartFuture.cancel()``) and timeouts stop a running call with
``ray.cancel(force=True)``, which kills the worker process running it (Ray starts
another). Ray does not tell a driver when a task starts (without its dashboard's
state API), so a call's ``timeout`` counts from submit: time spent waiting for a
free CPU counts too.

Backups (with *backups*; not for calls submitted with ``backups=False``): a
heartbeat thread, only while calls are live, looks for a straggler once no call
waits for a CPU and one is free (the rules of ``_speculation``; a call's running
time is counted from submit, run times are the client-side spans of finished
calls) and starts one copy of it per heartbeat: pinned to another alive node
with free CPU (``NodeAffinitySchedulingStrategy(soft=False)``) on a multi-node
cluster, a plain second copy on one node. The original's node is not known to
the driver, so on several nodes the copy may land on it. The first copy to
finish wins; the others are cancelled with ``force=True``.

Threads and locks: user threads submit; the completion thread completes calls;
the heartbeat and deadline threads (``_engine_base``) start copies and time calls
out. ``_lock`` guards ``_calls``, the records and the ``_to_watch`` hand-off, and is
never held across a call into Ray.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
import types
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any

from .._call_options import CallOptions
from .._errors import TaskLostError, attach_remote_traceback
from .._records import AttemptRow
from .._stats import ExecutorStats, Outcome
from ._engine_base import EngineExecutor, poisoned_error, set_outcome
from ._engine_future import EngineFuture
from ._remote_side import recorded, run_call_spread
from ._speculation import Running, choose_backup

__all__ = ["RayExecutor"]

logger = logging.getLogger("parallelize")
_executor_ids = itertools.count()
_RECENT = 4096  # run times kept for the backup rules
_ONE_NODE = "this node"  # the backup target name on a one-node cluster
_WAIT = 0.01  # seconds a ray.wait lasts: how soon refs submitted meanwhile are waited for
# Refs per ray.wait: the oldest ones (where the running calls are; at least twice the
# CPUs), and as many others in turn (a call finishing out of order there is seen within
# a few rounds). A wait costs per pending ref: waiting on all of 2,000 refs every 10 ms
# took the completion thread 0.3 s of CPU per 2,000 calls, on 512 0.2 s, on 128 0.15 s.
_WINDOW = 64
_RECORDS_HELD = 10_000  # worker records left unread at most (read in one ray.get beyond)


@dataclass(eq=False)
class _Call:
    future: EngineFuture
    remote: Any  # the Ray remote function (None: run_call_spread with fn first)
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    submitted: float
    refs: list[Any] = field(default_factory=list)  # attempts: the original, then copies
    nodes: set[str] = field(default_factory=set)  # where its copies were pinned
    live: int = 0  # attempts not finished
    backups: bool = True
    finished: bool = False
    ended: str = "cancelled"  # how attempts still running when it finished are recorded


class RayExecutor(EngineExecutor):
    """Runs calls as Ray tasks; a :class:`concurrent.futures.Executor`.

    Uses the Ray runtime already initialised in this process if there is one;
    else ``ray.init(address=address)`` (None: a local Ray started in this
    process), shut down again with the executor. *max_retries*: how many times
    Ray re-runs a call whose worker died. *backups*: start speculative copies of
    straggling calls (at most *max_backups_per_call* each).
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        max_retries: int = 2,
        backups: bool = True,
        max_backups_per_call: int = 1,
        heartbeat_interval: float = 0.25,
        name: str | None = None,
    ) -> None:
        import ray

        super().__init__(name=name or f"ray-{next(_executor_ids)}")
        self._owns_runtime = not ray.is_initialized()
        if self._owns_runtime:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        self.max_retries = max_retries
        self.backups = backups
        self.max_backups_per_call = max_backups_per_call
        self._options: dict[str, Any] = {
            "max_retries": max_retries,
            "retry_exceptions": False,
            "num_returns": 2,  # the value, and the worker's record of the run
        }
        # Our options are the remote functions' defaults: ``.options()`` would wrap them
        # and merge the options again on every call.
        self._remote = ray.remote(**self._options)(run_call_spread)
        # One Ray remote function per user function: Ray exports it once, and calls
        # then ship only their arguments.
        self._remotes: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._ids = itertools.count()
        self._calls: dict[int, _Call] = {}
        self._epoch = time.monotonic()
        self._epoch_wall = time.time()  # the workers' records are wall-clock times
        self._attempts: list[AttemptRow] = []
        # Rows of attempts that returned, with their worker record still a Ray object:
        # read in one ray.get when stats() asks (see _record).
        self._unread_rows: list[tuple[AttemptRow, Any]] = []
        # Run times of the latest finished calls, for the backup rules.
        self._durations: collections.deque[float] = collections.deque(maxlen=_RECENT)
        self._cpus = 0.0
        self._nodes: list[str] = []
        self._cluster_checked = -1e9
        self._backups_started = 0
        self._backups_won = 0
        # New attempts for the completion thread: (value ref, record ref, call, pinned node).
        self._to_watch: list[tuple[Any, Any, _Call, str | None]] = []
        self._watch_wake = threading.Event()
        self._completer = threading.Thread(
            target=self._completion_loop, name=f"{self.name}-completion", daemon=True
        )
        self._completer.start()
        if backups:
            self._start_heartbeat(heartbeat_interval)

    # -- submitting -------------------------------------------------------------------

    def _start_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: CallOptions,
    ) -> EngineFuture:
        remote = self._remote_for(fn)
        if remote is None:
            # num_returns=2: two refs, where Ray's annotation says one.
            ref, record = self._remote.remote(fn, *args, **kwargs)  # pyright: ignore[reportGeneralTypeIssues]
        else:
            ref, record = remote.remote(*args, **kwargs)
        future = EngineFuture(self, next(self._ids), ref)
        call = _Call(future, remote, fn, args, kwargs, time.monotonic(), [ref], live=1)
        call.backups = options.backups is not False
        with self._lock:
            self._calls[future.call_id] = call
            self._to_watch.append((ref, record, call, None))
            first = len(self._to_watch) == 1
        if first:
            self._watch_wake.set()
        self._stats.task_submitted()
        if self._heartbeat is not None and call.backups and not self._wake.is_set():
            self._wake.set()
        return future

    def _watch(self, call: _Call, ref: Any, record: Any, node: str | None) -> None:
        """Hand *ref* to the completion thread (one waiter for all refs: a callback per ref
        would run on Ray's own thread once per call and compete with submission)."""
        with self._lock:
            self._to_watch.append((ref, record, call, node))
            first = len(self._to_watch) == 1
        if first:
            self._watch_wake.set()

    def _remote_for(self, fn: Callable[..., Any]) -> Any:
        if not isinstance(fn, types.FunctionType):
            return None
        remote = self._remotes.get(fn)
        if remote is None:
            import ray

            remote = self._remotes[fn] = ray.remote(**self._options)(recorded(fn))
        return remote

    # -- completion (the completion thread) ----------------------------------------------

    def _completion_loop(self) -> None:
        """Wait for all watched refs at once and finish the ready ones in batches: one
        ``ray.wait`` and one ``ray.get`` per batch instead of a callback per call."""
        import ray

        # This thread alone owns the refs being waited for (the hand-off is ``_to_watch``),
        # oldest first.
        watched: dict[Any, tuple[Any, _Call, str | None]] = {}
        turn = 0
        window = _WINDOW
        sized = -1e9
        while True:
            with self._lock:
                new, self._to_watch = self._to_watch, []
            for ref, record, call, node in new:
                watched[ref] = (record, call, node)
            if not watched:
                if self._stop.is_set():
                    return
                self._watch_wake.wait()
                self._watch_wake.clear()
                continue
            if time.monotonic() - sized > 5.0:  # the oldest refs must cover every CPU
                with contextlib.suppress(Exception):
                    cpus = ray.cluster_resources().get("CPU", 0.0)  # type: ignore[no-untyped-call]
                    window = max(_WINDOW, 2 * int(cpus))
                sized = time.monotonic()
            refs = list(watched)
            if len(refs) > window:  # the oldest, and the next slice of the others in turn
                rest = refs[window:]
                first = (turn * window) % len(rest)
                refs = refs[:window] + rest[first : first + window]
                turn += 1
            try:
                # A short timeout: refs submitted meanwhile join the next wait.
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=_WAIT, fetch_local=True)
            except Exception:  # the runtime is shutting down: nothing more will finish
                logger.debug("%s: ray.wait failed", self.name, exc_info=True)
                if self._stop.wait(_WAIT):
                    return
                continue
            if len(self._unread_rows) > _RECORDS_HELD:
                self._read_records()
            if not ready:
                continue
            batch = [(ref, *watched.pop(ref)) for ref in ready]
            for ref, call, node, value, record, exc in self._outcomes(batch):
                try:
                    self._attempt_done(call, ref, node, value, record, exc)
                except Exception:  # never lose the thread; the caller's future says why
                    logger.exception("%s: finishing call %d failed", self.name, call.future.call_id)
                    set_outcome(
                        call.future,
                        None,
                        TaskLostError(f"call {call.future.call_id}: could not be finished"),
                    )

    def _outcomes(
        self, batch: list[tuple[Any, Any, _Call, str | None]]
    ) -> list[tuple[Any, _Call, str | None, Any, Any, BaseException | None]]:
        """(ref, call, node, value, record ref, error) of each ready attempt of *batch*
        (value ref, record ref, call, node): one ``ray.get`` for the values of the batch,
        each attempt alone only if one of them failed. The records stay Ray objects (see
        ``_record``); a failed attempt has none."""
        import ray

        try:
            got = ray.get([b[0] for b in batch])
            return [
                (ref, call, node, got[i], record, None)
                for i, (ref, record, call, node) in enumerate(batch)
            ]
        except Exception:
            pass
        out: list[tuple[Any, _Call, str | None, Any, Any, BaseException | None]] = []
        for ref, record, call, node in batch:
            try:
                out.append((ref, call, node, ray.get(ref), record, None))
            except Exception as exc:  # the call's own error (a RayTaskError) or Ray's
                out.append((ref, call, node, None, None, exc))
        return out

    def _attempt_done(
        self,
        call: _Call,
        ref: Any,
        node: str | None,
        value: Any,
        record: Any,
        exc: BaseException | None,
    ) -> None:
        end = time.monotonic()
        lost = exc is not None and self._is_lost(exc)
        backup = ref is not call.refs[0]
        losers: list[Any] = []
        with self._lock:  # one critical section per completion: it is on every call's path
            call.live -= 1
            if call.finished:  # another copy won, or the caller gave up (cancel, timeout)
                self._record(call, end, call.ended, node, backup, record)
                return
            if lost and call.live > 0:  # another copy carries on
                self._record(call, end, "lost", node, backup, record)
                return
            call.finished = True
            del self._calls[call.future.call_id]
            if len(call.refs) > 1:
                losers = [r for r in call.refs if r is not ref]
            chained = call.future.used_as_argument
            if exc is None and backup:
                self._backups_won += 1
            outcome = "won" if exc is None else ("lost" if lost else "failed")
            self._record(call, end, outcome, node, backup, record)
        call.fn, call.args, call.kwargs = _dropped, (), {}
        if losers and not chained:
            self._kill(losers)
        if exc is None:
            self._stats.task_finished(Outcome.SUCCEEDED)
            call.future.fetched = value
            set_outcome(call.future, value)
            return
        self._stats.task_finished(Outcome.FAILED)
        set_outcome(call.future, None, self._error(call.future, exc))

    def _is_lost(self, exc: BaseException) -> bool:
        import ray.exceptions as rex

        return isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError))

    def _error(self, future: EngineFuture, exc: BaseException) -> BaseException:
        """The exception the caller sees for the attempt's error *exc*."""
        import ray.exceptions as rex

        if isinstance(exc, rex.RayTaskError):
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            return attach_remote_traceback(cause, str(exc))
        if isinstance(exc, (rex.TaskCancelledError, CancelledError)):
            return TaskLostError(f"call {future.call_id} was cancelled on the Ray cluster")
        if self._is_lost(exc):
            records = [("ray", 0.0, 0.0)] * (self.max_retries + 1)
            return poisoned_error(
                f"call {future.call_id} of {self.name!r}",
                records,
                f"by Ray, max_retries={self.max_retries}; last: {type(exc).__name__}",
            )
        return exc

    def _record(
        self,
        call: _Call,
        end: float,
        outcome: str,
        node: str | None,
        backup: bool,
        record: Any,
    ) -> None:
        """Record an attempt (``_lock`` held). An attempt that never returned (lost with
        its worker, killed) has only the client-side span (submitted -> seen finished), on
        the node a copy was pinned to, else on "ray". One that returned has the worker's
        record (*record*, a Ray object): its row is finished when ``stats()`` reads the
        records, all in one ``ray.get`` (reading each with its value cost the completion
        thread a second object per call), to name the worker (``node/pid``) and span the
        run as the worker timed it."""
        where = node or "ray"
        row = AttemptRow(
            bundle=call.future.call_id,
            attempt=0,
            host=where,
            slot=where,
            start=call.submitted - self._epoch,
            end=end - self._epoch,
            outcome=outcome,
            is_backup=backup,
        )
        if record is None:
            self._attempts.append(row)
        else:
            self._unread_rows.append((row, record))
        if outcome == "won":
            self._durations.append(end - call.submitted)

    def _kill(self, refs: list[Any]) -> None:
        import ray

        for ref in refs:
            try:
                ray.cancel(ref, force=True)  # kills the worker process if it runs
            except Exception:  # already finished, or its worker is gone
                logger.debug("%s: ray.cancel failed", self.name, exc_info=True)

    def _fetch(self, future: EngineFuture, timeout: float | None = None) -> Any:
        # values arrive with completion: nothing to wait for
        return future.fetched

    def _cancel_call(self, future: EngineFuture) -> None:
        refs = self._claim(future.call_id, "cancelled")
        if refs is None:
            return
        self._stats.task_finished(Outcome.CANCELLED)
        self._kill(refs)

    def _claim(self, call_id: int, ended: str) -> list[Any] | None:
        """Mark a live call finished (cancelled or timed out); its attempts, or None."""
        with self._lock:
            call = self._calls.pop(call_id, None)
            if call is None or call.finished:
                return None
            call.finished = True
            call.ended = ended
            return list(call.refs)

    # -- timeouts (the deadline thread, see _engine_base) --------------------------------

    def _started_at_submit(self) -> tuple[float, str] | None:
        return time.monotonic(), "a Ray worker, killed (the timeout counts from submit on Ray)"

    def _expire(self, call_id: int) -> bool:
        refs = self._claim(call_id, "timed out")
        if refs is None:
            return False
        self._kill(refs)
        return True

    # -- backups (heartbeat thread) -----------------------------------------------------

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
            Running(c.future.call_id, now - c.submitted, frozenset(c.nodes), len(c.refs) - 1)
            for c in live
            if c.backups and not c.finished
        ]
        targets = self._nodes if len(self._nodes) > 1 else [_ONE_NODE]
        choice = choose_backup(
            running, durations, targets, pending=0, max_backups=self.max_backups_per_call
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
            # num_returns=2: two refs, where Ray's annotation says one.
            ref, record = self._remote.options(**options).remote(fn, *args, **kwargs)  # pyright: ignore[reportGeneralTypeIssues]
        else:
            ref, record = remote.options(**options).remote(*args, **kwargs)
        with self._lock:
            late = self._calls.get(call_id) is not call  # finished meanwhile
            if not late:
                call.refs.append(ref)
                call.nodes.add(node)
                call.live += 1
                self._backups_started += 1
        if late:
            self._kill([ref])
            return
        logger.info("%s: backup of call %d on %s", self.name, call_id, node)
        self._watch(call, ref, record, None if node == _ONE_NODE else node)

    # -- introspection and lifecycle ------------------------------------------------------

    def stats(self) -> ExecutorStats:
        """Counters, run times and per-worker rows from the workers' records of each
        attempt (see ``_record``); ``extra``: ``attempts`` (for the timeline), ``hosts``
        (one row per worker, ``node/pid``), ``backups_started``, ``backups_won``."""
        self._read_records()
        with self._lock:
            attempts = list(self._attempts)
            started, won = self._backups_started, self._backups_won
        return self._snapshot(attempts, backups_started=started, backups_won=won)

    def _read_records(self) -> None:
        """Finish the rows whose worker records are still Ray objects (one ``ray.get``)."""
        import ray

        with self._lock:
            rows, self._unread_rows = self._unread_rows, []
        if not rows:
            return
        try:
            records = ray.get([ref for _, ref in rows])
        except Exception:  # one is gone (e.g. its node): read them one by one
            records = []
            for _, ref in rows:
                try:
                    records.append(ray.get(ref))
                except Exception:
                    records.append(None)
        finished = []
        for (row, _), record in zip(rows, records, strict=True):
            if record is not None:
                where, start_wall, end_wall = record
                row = dataclasses.replace(
                    row,
                    host=where.split("/", 1)[0],
                    slot=where,
                    start=start_wall - self._epoch_wall,
                    end=end_wall - self._epoch_wall,
                )
            finished.append(row)
        with self._lock:
            self._attempts.extend(finished)

    def _cancel_queued(self) -> int:
        return sum(1 for f in self._live_futures() if f.cancel())

    def _live_futures(self) -> list[EngineFuture]:
        with self._lock:
            return [c.future for c in self._calls.values()]

    def _shutdown_impl(self, *, wait: bool, cancel_futures: bool) -> None:
        import ray

        if cancel_futures or not wait:
            self._cancel_queued()
        if wait:
            self._join()
        self._stop_threads()
        self._wake.set()
        self._watch_wake.set()
        if wait:
            self._completer.join()
        if self._owns_runtime:
            self._read_records()  # stats() after shutdown still names the workers
            ray.shutdown()


def _dropped(*_: Any, **__: Any) -> None:  # what a finished call keeps instead of its function
    return None
