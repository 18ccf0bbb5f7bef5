"""``Method.RAY``: calls run as Ray tasks.

Each call is one Ray task of the function itself, run by ``recorded(fn)`` (a Ray
remote function made once per function; Ray has no reserved keywords in
``.remote()``, so every user keyword reaches it). Other callables (bound methods,
callable objects) run through ``run_call_spread(fn, chained, *args, **kwargs)``,
those two positional-only. Both return one object, the call's record
``[value, where, start, end]``: the value with where and when the call ran as the
worker saw it (its node and pid, start and end); ``stats()`` and the timeline are
built from these records (see ``_remote_side``).
The SmartFuture's inner future is completed by one completion thread
(``_ray_completion``: batched ``ray.wait`` and ``ray.get``). A SmartFuture of this executor
passed to another call is handed to Ray as its ObjectRef (top-level arguments
are resolved by Ray on the worker, to the record): such a call runs through
``recorded_chained(fn)``, told which arguments are records, and takes their values
out there (the value stays in the cluster).

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
``_ray_backups``, which also holds the call table's ``Call``. Layers:
``RayBackups`` <- ``RayCompletion`` <- ``RayExecutor`` (state, submitting,
cancelling, lifecycle); ``_ray_outcomes`` translates errors and builds rows.

Threads and locks: user threads submit; the completion thread completes calls;
the heartbeat and deadline threads (``_engine_base``) start copies and time calls
out. ``_lock`` guards ``_calls``, the records and the ``_to_watch`` hand-off, and is
never held across a call into Ray.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import types
import weakref
from collections.abc import Callable
from typing import Any

from .._call_options import CallOptions
from .._records import AttemptRow
from .._stats import ExecutorStats, Outcome
from ._engine_future import EngineFuture
from ._ray_backups import Call
from ._ray_completion import RayCompletion
from ._ray_outcomes import RawAttempt, attempt_row
from ._remote_side import Chained, recorded, recorded_chained, run_call_spread

__all__ = ["RayExecutor"]

logger = logging.getLogger("parallelize")
_executor_ids = itertools.count()
_RECENT = 4096  # run times kept for the backup rules


class RayExecutor(RayCompletion):
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
        self._remotes: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
        self._ids = itertools.count()
        self._calls: dict[int, Call] = {}
        self._epoch = time.monotonic()
        self._epoch_wall = time.time()  # the workers' records are wall-clock times
        self._attempts: list[AttemptRow] = []
        # Attempts seen finished whose rows ``stats()`` has not built yet (``_record``).
        self._unbuilt: list[RawAttempt] = []
        # Run times of the latest finished calls, for the backup rules.
        self._durations: collections.deque[float] = collections.deque(maxlen=_RECENT)
        self._init_backups()
        # New attempts for the completion thread: (ref, call, pinned node).
        self._to_watch: list[tuple[Any, Call, str | None]] = []
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
        chained: Chained | None,
    ) -> EngineFuture:
        remote = self._remote_for(fn, chained is not None)
        if remote is None:
            args = (chained, *args)  # run_call_spread(fn, chained, *args, **kwargs)
            ref = self._remote.remote(fn, *args, **kwargs)
        else:
            if chained is not None:  # recorded_chained(fn)(chained, *args, **kwargs)
                args = (chained, *args)
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

    def _remote_for(self, fn: Callable[..., Any], chained: bool) -> Any:
        """The Ray remote function running plain function *fn* (None for other callables),
        the one for calls with chained arguments if *chained*; each made once."""
        if not isinstance(fn, types.FunctionType):
            return None
        pair = self._remotes.get(fn)
        if pair is None:
            pair = self._remotes[fn] = [None, None]
        remote = pair[chained]
        if remote is None:
            import ray

            wrapped = recorded_chained(fn) if chained else recorded(fn)
            remote = pair[chained] = ray.remote(**self._options)(wrapped)
        return remote

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
            unbuilt, self._unbuilt = self._unbuilt, []
            self._attempts += [attempt_row(raw, self._epoch_wall) for raw in unbuilt]
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
        if wait:
            self._completer.join()
        if self._owns_runtime:
            ray.shutdown()
