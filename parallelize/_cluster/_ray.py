"""``Method.RAY``: calls run as Ray tasks.

Each call is one Ray task of the function itself (``ray.remote(fn)``, made once
per function; Ray has no reserved keywords in ``.remote()``, so every user
keyword reaches it). Other callables (bound methods, callable objects) run
through ``run_call_spread(fn, *args, **kwargs)``, the function positional-only.
The SmartFuture's inner future is completed from the ObjectRef's own
completion callback. A SmartFuture of this
executor passed to another call is handed to Ray as its ObjectRef (top-level
arguments are resolved by Ray on the worker: the value stays in the cluster).

Failures: a worker that dies under a call is retried by Ray (``max_retries``);
when Ray gives up (``WorkerCrashedError``, ``NodeDiedError``...) the call fails
with :class:`PoisonedCallError`. Application exceptions are not retried
(``retry_exceptions=False``) and arrive as their own type with the worker's
traceback attached. No speculative backups on Ray (see the README).

Threads and locks: user threads submit; Ray's callback thread completes calls.
``_lock`` guards ``_calls`` only and is never held across a call into Ray.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import types
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError
from typing import Any

from .._errors import AttemptRecord, PoisonedCallError, TaskLostError, attach_remote_traceback
from .._executor_base import BaseExecutor
from .._stats import ExecutorStats, Outcome
from ._engine_future import EngineFuture, native_arguments
from ._remote_side import run_call_spread

__all__ = ["RayExecutor"]

logger = logging.getLogger("parallelize")
_executor_ids = itertools.count()


class RayExecutor(BaseExecutor):
    """Runs calls as Ray tasks; a :class:`concurrent.futures.Executor`.

    Uses the Ray runtime already initialised in this process if there is one;
    else ``ray.init(address=address)`` (None: a local Ray started in this
    process), shut down again with the executor. *max_retries*: how many times
    Ray re-runs a call whose worker died.
    """

    passes_smart_futures = True

    def __init__(
        self, *, address: str | None = None, max_retries: int = 2, name: str | None = None
    ) -> None:
        import ray

        super().__init__(name=name or f"ray-{next(_executor_ids)}")
        self._owns_runtime = not ray.is_initialized()
        if self._owns_runtime:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        self.max_retries = max_retries
        self._remote = ray.remote(run_call_spread).options(
            max_retries=max_retries, retry_exceptions=False
        )
        # One Ray remote function per user function: Ray exports it once, and calls
        # then ship only their arguments.
        self._remotes: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._ids = itertools.count()
        self._calls: dict[int, EngineFuture] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._attempts: list[dict[str, Any]] = []
        self._durations: list[float] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self._check_open()
        args, kwargs, foreign = native_arguments(self, args, kwargs)
        if foreign:
            from .._submission import submit_call

            return submit_call(self, fn, args, kwargs).future
        remote = self._remote_for(fn)
        if remote is None:
            ref = self._remote.remote(fn, *args, **kwargs)
        else:
            ref = remote.remote(*args, **kwargs)
        future = EngineFuture(self, next(self._ids), ref)
        submitted = time.monotonic()
        with self._lock:
            self._calls[future.call_id] = future
        self._stats.task_submitted()
        # Ray completes this future (with the value or the error) from its own thread.
        ref.future().add_done_callback(lambda done: self._finish(future, done, submitted))
        return future

    def _remote_for(self, fn: Callable[..., Any]) -> Any:
        if not isinstance(fn, types.FunctionType):
            return None
        remote = self._remotes.get(fn)
        if remote is None:
            import ray

            remote = ray.remote(fn).options(max_retries=self.max_retries, retry_exceptions=False)
            self._remotes[fn] = remote
        return remote

    def _finish(self, future: EngineFuture, done: Future[Any], submitted: float) -> None:
        with self._lock:
            if self._calls.pop(future.call_id, None) is None:
                return  # cancelled by the caller
        end = time.monotonic()
        try:
            value = done.result()
        except BaseException as exc:
            outcome, error = self._classify(future, exc)
            self._record(future, submitted, end, "failed" if outcome else "lost")
            self._stats.task_finished(Outcome.FAILED)
            _set(future, None, error)
            return
        self._record(future, submitted, end, "won")
        self._stats.task_finished(Outcome.SUCCEEDED)
        _set(future, value)

    def _classify(self, future: EngineFuture, exc: BaseException) -> tuple[bool, BaseException]:
        """(is an application error, the exception the caller sees)."""
        import ray.exceptions as rex

        if isinstance(exc, rex.RayTaskError):
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            return True, attach_remote_traceback(cause, str(exc))
        if isinstance(exc, (rex.TaskCancelledError, CancelledError)):
            return False, TaskLostError(f"call {future.call_id} was cancelled on the Ray cluster")
        if isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError)):
            attempts = tuple(
                AttemptRecord(host="ray", reason=f"{type(exc).__name__}: the worker died")
                for _ in range(self.max_retries + 1)
            )
            return False, PoisonedCallError(
                f"call {future.call_id} of {self.name!r} was given up by Ray after "
                f"{len(attempts)} attempts (max_retries={self.max_retries}) each lost with "
                f"its worker (the call probably kills its worker process): {exc}",
                attempts,
            )
        return False, exc

    def _record(self, future: EngineFuture, submitted: float, end: float, outcome: str) -> None:
        # Ray keeps no per-task records without its dashboard: the client-side span
        # (submitted -> completed) is what we can show, on one row per executor.
        with self._lock:
            self._attempts.append(
                {
                    "slot": "ray",
                    "start": submitted - self._started,
                    "end": end - self._started,
                    "outcome": outcome,
                    "bundle": future.call_id,
                    "is_backup": False,
                }
            )
            if outcome == "won":
                self._durations.append(end - submitted)

    def _fetch(self, future: EngineFuture) -> Any:  # values arrive with completion
        return future.fetched

    def _cancel_call(self, future: EngineFuture) -> None:
        import ray

        with self._lock:
            if self._calls.pop(future.call_id, None) is None:
                return
        self._stats.task_finished(Outcome.CANCELLED)
        ray.cancel(future.engine_future, force=False)

    def stats(self) -> ExecutorStats:
        """Counters and client-side durations; ``extra["attempts"]`` feeds the timeline."""
        import dataclasses

        import numpy as np

        with self._lock:
            attempts = list(self._attempts)
            durations = np.asarray(self._durations, dtype=np.float64)
        snapshot = self._stats.snapshot(self.name, attempts=attempts)
        return dataclasses.replace(snapshot, durations=durations)

    def _cancel_queued(self) -> int:
        with self._lock:
            live = list(self._calls.values())
        return sum(1 for f in live if f.cancel())

    def _shutdown_impl(self, *, wait: bool, cancel_futures: bool) -> None:
        import ray

        if cancel_futures or not wait:
            self._cancel_queued()
        if wait:
            self._join()
        if self._owns_runtime:
            ray.shutdown()

    def _join(self) -> None:
        with self._lock:
            live = list(self._calls.values())
        for future in live:
            with contextlib.suppress(CancelledError):
                future.exception()


def _set(future: Future[Any], value: Any, exc: BaseException | None = None) -> None:
    if future.done():
        return
    try:
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)
    except InvalidStateError:
        pass
