"""``Method.RAY``: calls run as Ray tasks.

Each call is one Ray task of the function itself, run by ``recorded(fn)`` (a Ray
remote function made once per function; Ray has no reserved keywords in
``.remote()``, so every user keyword reaches it). Other callables (bound methods,
callable objects) run through ``run_call_spread(fn, *args, **kwargs)``, the
function positional-only. Both return one object, a ``Recorded``: the value with
where and when the call ran as the worker saw it (its node and pid, start and
end); ``stats()`` and the timeline are built from these records.
The SmartFuture's inner future is completed by one completion thread that waits
for the live ObjectRefs in batches (``ray.wait`` every 10 ms on the oldest refs
and a slice of the others in turn, see ``_WINDOW_MIN``) and fetches the ready ones'
results in one ``ray.get``: a callback per ref would run Ray's callback thread
once per call, competing with the threads that submit. While nobody waits for a
call (``result()``/``exception()`` blocked on one, a done-callback: ``await``,
``wait_all``, progress), it looks only every ``_LAZY`` seconds, with a non-blocking
``ray.wait``; a wait wakes it at once. So ``done()`` polling and
``concurrent.futures.wait`` on inner futures may see a call finish up to 50 ms late.
A SmartFuture of this executor
passed to another call is handed to Ray as its ObjectRef (top-level arguments
are resolved by Ray on the worker, where ``recorded`` takes the value out of the
``Recorded``: the value stays in the cluster).

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

Backups (with *backups*; not for calls submitted with ``backups=False``): see
``_ray_backups``, which also holds the call table's ``Call``.

Threads and locks: user threads submit; the completion thread completes calls;
the heartbeat and deadline threads (``_engine_base``) start copies and time calls
out. ``_lock`` guards ``_calls``, the records and the ``_to_watch`` hand-off, and is
never held across a call into Ray.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import threading
import time
import types
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from .._call_options import CallOptions
from .._errors import TaskLostError, attach_remote_traceback
from .._records import AttemptRow
from .._stats import ExecutorStats, Outcome
from ._engine_base import poisoned_error, set_outcome
from ._engine_future import EngineFuture
from ._ray_backups import Call, RayBackups
from ._remote_side import Recorded, recorded, run_call_spread

__all__ = ["RayExecutor"]

logger = logging.getLogger("parallelize")
_executor_ids = itertools.count()
_RECENT = 4096  # run times kept for the backup rules
_WAIT = 0.01  # seconds a ray.wait lasts: how soon refs submitted meanwhile are waited for
# Refs per ray.wait: the oldest ones (where the running calls are) and as many others in
# turn (a call finishing out of order there is seen within a few rounds). A wait costs
# about 3 us per ref, a ray.get some 250 us plus its values: the window follows how
# many refs finish per wait, from _WINDOW_MIN (at least twice the CPUs) up to
# _WINDOW_MAX, doubling when half of it was ready and halving when under a quarter was.
# (A fixed 64 + 64 refs cost 2,000 no-op calls on 2 CPUs ~65 ms of the thread's CPU in
# waits, where ~11 refs finished per wait.)
_WINDOW_MIN = 16
_WINDOW_MAX = 1024
# While nobody waits for a call (no result() or exception() blocked on one, no done-
# callback, for _WANTED_FOR seconds), finished calls are looked for every _LAZY seconds,
# in bigger batches: a pass costs the thread ~0.3 ms of CPU whatever its size (a blocking
# ray.wait, measured), taken from the threads submitting. A wait for a call wakes it at once.
_LAZY = 0.05
_WANTED_FOR = 1.0

# An attempt seen finished: (ref, call, pinned node, what it returned, its error).
_Outcome = tuple[Any, Call, "str | None", "Recorded | None", "BaseException | None"]


class RayExecutor(RayBackups):
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
        self._options: dict[str, Any] = {"max_retries": max_retries, "retry_exceptions": False}
        # Our options are the remote functions' defaults: ``.options()`` would wrap them
        # and merge the options again on every call.
        self._remote = ray.remote(**self._options)(run_call_spread)
        # One Ray remote function per user function: Ray exports it once, and calls
        # then ship only their arguments.
        self._remotes: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._ids = itertools.count()
        self._calls: dict[int, Call] = {}
        self._epoch = time.monotonic()
        self._epoch_wall = time.time()  # the workers' records are wall-clock times
        self._attempts: list[AttemptRow] = []
        # Run times of the latest finished calls, for the backup rules.
        self._durations: collections.deque[float] = collections.deque(maxlen=_RECENT)
        self._init_backups()
        # New attempts for the completion thread: (ref, call, pinned node).
        self._to_watch: list[tuple[Any, Call, str | None]] = []
        self._watch_wake = threading.Event()
        self._wanted_until = -1e9  # monotonic: the completion thread is eager until then
        self._want_wake = threading.Event()
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
            ref = self._remote.remote(fn, *args, **kwargs)
        else:
            ref = remote.remote(*args, **kwargs)
        future = EngineFuture(self, next(self._ids), ref)
        call = Call(future, remote, fn, args, kwargs, time.monotonic(), [ref], live=1)
        call.backups = options.backups is not False
        with self._lock:
            self._calls[future.call_id] = call
            self._to_watch.append((ref, call, None))
            first = len(self._to_watch) == 1
        if first:
            self._watch_wake.set()
        self._stats.task_submitted()
        if self._heartbeat is not None and call.backups and not self._wake.is_set():
            self._wake.set()
        return future

    def _watch(self, call: Call, ref: Any, node: str | None) -> None:
        """Hand *ref* to the completion thread (one waiter for all refs: a callback per ref
        would run on Ray's own thread once per call and compete with submission)."""
        with self._lock:
            self._to_watch.append((ref, call, node))
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
        watched: dict[Any, tuple[Call, str | None]] = {}
        turn = 0
        floor = window = _WINDOW_MIN
        sized = -1e9
        while True:
            lazy = bool(watched) and time.monotonic() > self._wanted_until
            if lazy:  # see _LAZY: look again later, or as soon as someone waits
                self._want_wake.clear()
                if time.monotonic() > self._wanted_until:
                    self._want_wake.wait(_LAZY)
            with self._lock:
                new, self._to_watch = self._to_watch, []
            for ref, call, node in new:
                watched[ref] = (call, node)
            if not watched:
                if self._stop.is_set():
                    return
                self._watch_wake.wait()
                self._watch_wake.clear()
                continue
            if time.monotonic() - sized > 5.0:  # the oldest refs must cover every CPU
                with contextlib.suppress(Exception):
                    cpus = ray.cluster_resources().get("CPU", 0.0)  # type: ignore[no-untyped-call]
                    floor = max(_WINDOW_MIN, 2 * int(cpus))
                    window = max(window, floor)
                sized = time.monotonic()
            refs = list(watched)
            if len(refs) > window:  # the oldest, and the next slice of the others in turn
                rest = refs[window:]
                first = (turn * window) % len(rest)
                refs = refs[:window] + rest[first : first + window]
                turn += 1
            try:
                # A short timeout: refs submitted meanwhile join the next wait.
                wait = 0.0 if lazy else _WAIT
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait, fetch_local=True)
            except Exception:  # the runtime is shutting down: nothing more will finish
                logger.debug("%s: ray.wait failed", self.name, exc_info=True)
                if self._stop.wait(_WAIT):
                    return
                continue
            if 2 * len(ready) >= window and len(refs) >= window:
                window = min(_WINDOW_MAX, 2 * window)
            elif 4 * len(ready) < window:
                window = max(floor, window // 2)
            if ready:
                self._finish([(ref, *watched.pop(ref)) for ref in ready])

    def _finish(self, batch: list[tuple[Any, Call, str | None]]) -> None:
        """Settle the ready attempts of *batch* (ref, call, pinned node): their results in
        one ``ray.get``, the call table in one critical section, then the futures."""
        outcomes = self._outcomes(batch)
        end = time.monotonic()
        decided: list[tuple[Call, Recorded | None, BaseException | None, list[Any]]] = []
        with self._lock:
            for ref, call, node, got, exc in outcomes:
                losers = self._settle(call, ref, node, got, exc, end)
                if losers is not None:
                    decided.append((call, got, exc, losers))
        for call, got, exc, losers in decided:
            try:
                self._complete(call, got, exc, losers)
            except Exception:  # never lose the thread; the caller's future says why
                logger.exception("%s: finishing call %d failed", self.name, call.future.call_id)
                set_outcome(
                    call.future,
                    None,
                    TaskLostError(f"call {call.future.call_id}: could not be finished"),
                )

    def _outcomes(self, batch: list[tuple[Any, Call, str | None]]) -> list[_Outcome]:
        """What each ready attempt of *batch* returned, or its error: one ``ray.get`` for
        the batch, each attempt alone only if one of them failed."""
        import ray

        try:
            got = ray.get([ref for ref, _, _ in batch])
            return [(ref, c, n, g, None) for (ref, c, n), g in zip(batch, got, strict=True)]
        except Exception:
            pass
        out: list[_Outcome] = []
        for ref, call, node in batch:
            try:
                out.append((ref, call, node, ray.get(ref), None))
            except Exception as exc:  # the call's own error (a RayTaskError) or Ray's
                out.append((ref, call, node, None, exc))
        return out

    def _settle(
        self,
        call: Call,
        ref: Any,
        node: str | None,
        got: Recorded | None,
        exc: BaseException | None,
        end: float,
    ) -> list[Any] | None:
        """Record the finished attempt *ref* of *call* (``_lock`` held); if it decides the
        call, mark it finished and return the copies to cancel, else None."""
        lost = exc is not None and self._is_lost(exc)
        backup = ref is not call.refs[0]
        call.live -= 1
        if call.finished:  # another copy won, or the caller gave up (cancel, timeout)
            self._record(call, end, call.ended, node, backup, got)
            return None
        if lost and call.live > 0:  # another copy carries on
            self._record(call, end, "lost", node, backup, got)
            return None
        call.finished = True
        del self._calls[call.future.call_id]
        if exc is None and backup:
            self._backups_won += 1
        outcome = "won" if exc is None else ("lost" if lost else "failed")
        self._record(call, end, outcome, node, backup, got)
        return [r for r in call.refs if r is not ref] if len(call.refs) > 1 else []

    def _complete(
        self, call: Call, got: Recorded | None, exc: BaseException | None, losers: list[Any]
    ) -> None:
        call.fn, call.args, call.kwargs = _dropped, (), {}
        if losers and not call.future.used_as_argument:
            self._kill(losers)
        if call.future.watched:  # callbacks wait for the others too (wait_all, progress)
            self._wanted_until = time.monotonic() + _WANTED_FOR
        if exc is None and got is not None:
            self._stats.task_finished(Outcome.SUCCEEDED)
            call.future.fetched = got.value
            set_outcome(call.future, got.value)
            return
        self._stats.task_finished(Outcome.FAILED)
        if exc is None:  # a task that returned something other than a Recorded: a bug
            exc = TaskLostError(f"call {call.future.call_id}: its task returned no record")
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
        call: Call,
        end: float,
        outcome: str,
        node: str | None,
        backup: bool,
        got: Recorded | None,
    ) -> None:
        """Record an attempt (``_lock`` held). One that returned has the worker's record
        (*got*): its row names the worker (``node/pid``) and spans the run as the worker
        timed it. One that never returned (failed, lost with its worker, killed) has only
        the client-side span (submitted -> seen finished), on the node a copy was pinned
        to, else on "ray"."""
        if type(got) is Recorded:
            host, slot = got.where.split("/", 1)[0], got.where
            start, stop = got.start - self._epoch_wall, got.end - self._epoch_wall
        else:
            host = slot = node or "ray"
            start, stop = call.submitted - self._epoch, end - self._epoch
        self._attempts.append(
            AttemptRow(call.future.call_id, 0, host, slot, start, stop, outcome, backup)
        )
        if outcome == "won":
            self._durations.append(end - call.submitted)

    def _wanted(self) -> None:
        self._wanted_until = time.monotonic() + _WANTED_FOR
        if not self._want_wake.is_set():
            self._want_wake.set()

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

    # -- introspection and lifecycle ------------------------------------------------------

    def stats(self) -> ExecutorStats:
        """Counters, run times and per-worker rows from the workers' records of each
        attempt (see ``_record``); ``extra``: ``attempts`` (for the timeline), ``hosts``
        (one row per worker, ``node/pid``), ``backups_started``, ``backups_won``."""
        with self._lock:
            attempts = list(self._attempts)
            started, won = self._backups_started, self._backups_won
        return self._snapshot(attempts, backups_started=started, backups_won=won)

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
        self._want_wake.set()
        if wait:
            self._completer.join()
        if self._owns_runtime:
            ray.shutdown()


def _dropped(*_: Any, **__: Any) -> None:  # what a finished call keeps instead of its function
    return None
