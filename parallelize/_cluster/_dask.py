"""``Method.DASK``: calls run as tasks of a Dask cluster (``distributed``).

Each call is one Dask task with a unique key (calls are never deduplicated). A call
with a keyword that ``Client.submit`` would take for itself (``key``,
``workers``, ``priority``, ``retries``...) is submitted as ``run_call(fn,
args, kwargs)``, so every user keyword reaches the function. The SmartFuture's
inner future is completed when Dask reports the task done, and its value stays
on the worker, as a Dask future's does, until it is read: a done future's value
then needs a round trip, shared by all finished calls not read yet (one
``gather``; see ``_dask_values``, which also coalesces reads in a stream). A
call that someone waits on with a done-callback when it finishes (``await``,
``wait_all``, ``add_done_callback``, calls with retries) has its value gathered
before it completes, one ``gather`` per batch of completions, on Dask's event
loop and bounded: a frozen worker holding a value delays only the calls whose
values it holds. A SmartFuture of
this executor passed to another call is handed to Dask as its Dask future, so
the value moves between workers only; such a call's own value is not brought
back unless asked for. Values not read when the executor shuts down its own
client are gathered first (one batch), so none is lost.

Failures: a worker dying under a call is retried by the scheduler itself (its
``allowed-failures`` setting); when Dask gives up (``KilledWorker``) the call
fails with :class:`PoisonedCallError` listing each lost attempt. An exception
raised by the function arrives with its type and the worker's traceback, and
is not retried.

Backups: a heartbeat thread (only while calls are live, and only with
*backups*) asks the scheduler which calls are processing where, and starts at
most one copy per heartbeat of a straggler on an idle worker (see
``_speculation``); the first copy to finish wins and the other is cancelled.
A call submitted with ``backups=False`` never gets a copy.

Timeouts (``submit_with``, see ``_engine_base``): the deadline counts from when
a worker is first seen running the call (the workers the scheduler lists it on
are asked, while it waits to start). Dask cannot stop a
running task: at the deadline the call's future fails with
:class:`TaskTimeoutError` and its Dask task is cancelled, but the worker thread
runs the function on to its end (its result is dropped).

This module submits and completes; ``_dask_values`` (its base class) gathers
values; ``_dask_scheduler`` (the base below) reads the scheduler: backups,
``stats()`` and when timed calls start. (Over 400 lines, a fifth of them this
docstring: submitting and completing share the call table and its lock, and are
kept together so that their transitions can be read in one place.)

Threads and locks: user threads submit; Dask's event loop watches attempts
(handed over in batches) and gathers the values of those with done-callbacks;
the completion thread finishes them and completes their futures, and never
waits for a value; the thread that first reads an unread value gathers the
batch; the heartbeat thread looks for stragglers; the deadline thread
(``_engine_base``) times calls out. ``_lock`` guards ``_calls`` (and ``_idle``
with it), every call's attempt list, ``_unread``, ``_prefetching`` and the
``_to_watch`` hand-off, and is never held across a call into Dask;
``_fetch_lock`` (see ``_dask_values``) makes readers' gathers one at a time, so
that no value is gathered twice.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from .._call_options import CallOptions
from .._errors import PoisonedCallError, TaskLostError, attach_remote_traceback
from .._stats import Outcome
from ._dask_scheduler import Attempt, Call
from ._dask_values import DaskValues, Fetched
from ._engine_base import poisoned_error, set_outcome
from ._engine_future import UNFETCHED, EngineFuture
from ._remote_side import Chained, lost_attempts, run_call

__all__ = ["DaskExecutor"]

logger = logging.getLogger("parallelize")
_executor_ids = itertools.count()


class DaskExecutor(DaskValues):
    """Runs calls on a Dask cluster; a :class:`concurrent.futures.Executor`.

    *client*: a ``distributed.Client`` to use (not closed by this executor); else
    *address* (``tcp://scheduler:8786``) to connect to; else a local cluster of
    worker processes is started (and closed on shutdown). *backups*: start
    speculative copies of straggling calls (at most *max_backups_per_call* each).
    """

    def __init__(
        self,
        client: Any = None,
        *,
        address: str | None = None,
        backups: bool = True,
        max_backups_per_call: int = 2,
        heartbeat_interval: float = 0.25,
        name: str | None = None,
    ) -> None:
        from distributed import Client

        super().__init__(name=name or f"dask-{next(_executor_ids)}")
        self._cluster: Any = None
        self._owns_client = client is None
        if client is None:
            if address:
                client = Client(address, set_as_default=False)  # type: ignore[no-untyped-call]
            else:
                from distributed import LocalCluster

                self._cluster = LocalCluster(  # type: ignore[no-untyped-call]
                    processes=True,
                    threads_per_worker=1,
                    dashboard_address="127.0.0.1:0",  # its HTTP server on loopback, any port
                    host="127.0.0.1",
                )
                client = Client(self._cluster, set_as_default=False)  # type: ignore[no-untyped-call]
        self.client = client
        self.backups = backups
        self.max_backups_per_call = max_backups_per_call
        # Keyword names Client.submit keeps for itself (key, workers, priority, retries...).
        self._reserved = frozenset(inspect.signature(type(client).submit).parameters)
        self._prefix = f"parallelize-{self.name}-{uuid.uuid4().hex[:8]}"
        self._ids = itertools.count()
        self._calls: dict[int, Call] = {}
        self._init_values()
        # Run times of finished calls from the scheduler's task stream (heartbeat thread only).
        self._durations: list[float] = []
        self._durations_read: set[str] = set()
        self._stream_mark = time.time()
        self._lost: dict[int, list[tuple[str, float, float]]] = {}
        self._backups_started = 0
        self._backups_won = 0
        self._winners: set[str] = set()
        self._timed_out_keys: set[str] = set()
        self._started_wall = time.time()
        # The scheduler records task start/stop per worker once its task stream is on.
        self.client.get_task_stream(start=self._started_wall)
        self._threads_total = 0  # worker threads in the cluster, refreshed every 5 s
        self._threads_checked = -1e9
        self._to_watch: list[tuple[Call, Attempt]] = []
        self._watchers: set[asyncio.Future[None]] = set()  # touched on the event loop only
        self._completed = queue.SimpleQueue()
        self._completer = threading.Thread(
            target=self._completion_loop, name=f"{self.name}-completion", daemon=True
        )
        self._completer.start()
        if backups:
            self._start_heartbeat(heartbeat_interval)

    # -- submitting ------------------------------------------------------------

    def _start_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: CallOptions,
        chained: Chained | None,
    ) -> EngineFuture:
        # *chained* needs nothing here: Dask resolves its futures among the arguments itself.
        call_id = next(self._ids)
        future = EngineFuture(self, call_id, None)
        call = Call(call_id, future, fn, args, kwargs, time.monotonic())
        call.backups = options.backups is not False
        with self._lock:
            self._calls[call_id] = call
            if self._idle.is_set():
                self._idle.clear()
        self._stats.task_submitted()
        self._start_attempt(call, None)
        self._wake.set()
        return future

    def _start_attempt(self, call: Call, worker: str | None) -> None:
        backup = worker is not None
        key = f"{self._prefix}-{call.id}"
        pin: dict[str, Any] = {}
        if backup:
            key += f"-b{len(call.attempts)}"
            # Loose: if that worker is gone by then, any other may run the copy.
            pin = {"workers": [worker], "allow_other_workers": True}
        if call.kwargs.keys() & self._reserved:
            # A keyword Client.submit would take for itself: pass the arguments packed.
            engine = self.client.submit(
                run_call, call.fn, call.args, call.kwargs, key=key, pure=False, **pin
            )
        else:
            engine = self.client.submit(
                call.fn, *call.args, key=key, pure=False, **pin, **call.kwargs
            )
        attempt = Attempt(key, engine, backup)
        with self._lock:
            call.attempts.append(attempt)
            if call.future.engine_future is None:
                call.future.engine_future = engine
            if backup:
                self._backups_started += 1
        if backup:
            logger.info("%s: backup of call %d on %s", self.name, call.id, worker)
        self._watch(call, attempt)

    # -- completion (the completion thread) ---------------------------------------

    def _watch(self, call: Call, attempt: Attempt) -> None:
        """Have the completion thread run ``_attempt_done`` when *attempt* finishes.

        ``Future.add_done_callback`` wakes Dask's event loop once per future (a
        socket write, as costly as the submit itself); instead new attempts are
        handed to the loop in batches, one wake-up per batch.
        """
        with self._lock:
            self._to_watch.append((call, attempt))
            first = len(self._to_watch) == 1
        if first:
            self.client.loop.add_callback(self._start_watching)

    def _start_watching(self) -> None:  # on Dask's event loop
        with self._lock:
            batch, self._to_watch = self._to_watch, []
        for call, attempt in batch:
            task = asyncio.ensure_future(self._await_attempt(call, attempt))
            self._watchers.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._watchers.discard)

    async def _await_attempt(self, call: Call, attempt: Attempt) -> None:  # on the loop
        state = getattr(attempt.engine, "_state", None)
        if state is not None and hasattr(state, "wait"):
            await state.wait()
            self._completed.put((call, attempt))
        else:  # a Dask without FutureState.wait: its public callback
            attempt.engine.add_done_callback(lambda _: self._completed.put((call, attempt)))

    def _completion_loop(self) -> None:
        """Finish attempts as Dask reports them, and complete prefetched futures. Never
        waits for a value: prefetches run on the event loop (see ``_dask_values``)."""
        while True:
            batch = self._drain(block=True)
            watched = self._finish(batch)
            if watched:  # their values are brought first: with those finishing meanwhile
                self._wait_for_window()
                more = self._drain(block=False)
                watched += self._finish(more)
                batch += more
                self._prefetch(watched)
            if None in batch:
                return

    def _drain(self, *, block: bool) -> list[tuple[Call, Attempt] | Fetched | None]:
        """The completed attempts and prefetches waiting (at least one if *block*); None:
        stop."""
        batch = [self._completed.get()] if block else []
        while not self._completed.empty():
            batch.append(self._completed.get())
        return batch

    def _finish(self, batch: list[tuple[Call, Attempt] | Fetched | None]) -> list[EngineFuture]:
        """Finish the calls *batch* decides; those to complete once their values are here."""
        watched = []
        for item in batch:
            if item is None:
                continue
            if isinstance(item, Fetched):
                self._complete_fetched(item)
                continue
            call, attempt = item
            try:
                future = self._attempt_done(call, attempt, attempt.engine)
            except Exception:  # never lose the thread; the call's future says what failed
                logger.exception("%s: finishing call %d failed", self.name, call.id)
                set_outcome(
                    call.future, None, TaskLostError(f"call {call.id}: could not be finished")
                )
                continue
            if future is not None:
                watched.append(future)
        return watched

    def _attempt_done(self, call: Call, attempt: Attempt, engine: Any) -> EngineFuture | None:
        """Finish *call* if *attempt* decides it; its future if it finished with a value
        that someone waits on with a done-callback (the caller gathers and completes it)."""
        status = engine.status
        exc: BaseException | None = None
        if status == "error":
            exc = engine.exception()
            if exc is not None and not _is_killed_worker(exc):
                tb = engine.traceback()
                if tb is not None:
                    attach_remote_traceback(exc, "".join(traceback.format_tb(tb)))
        lost = status != "finished" and (exc is None or _is_killed_worker(exc))
        future = call.future
        with self._lock:
            attempt.done = True
            if call.finished:
                return None
            if lost and any(not a.done for a in call.attempts):
                return None  # another copy carries on
            call.finished = True
            del self._calls[call.id]
            if not self._calls:
                self._idle.set()  # ends a coalescing window (_wait_for_window)
            losers = [a for a in call.attempts if not a.done]
            chained = future.used_as_argument
            # Callbacks would read the value at once (await, wait_all, retries): bring it
            # before completing. (A callback added from now on reads it itself.)
            watched = future.watched and not chained
            if status == "finished":
                future.engine_future = engine
                if not chained and not watched:
                    self._unread[call.id] = future
                self._winners.add(attempt.key)
                if attempt.is_backup:
                    self._backups_won += 1
        call.fn, call.args, call.kwargs = _dropped, (), {}
        if losers and not chained:
            self.client.cancel([a.engine for a in losers], reason="another copy finished first")
        if status == "finished":
            self._stats.task_finished(Outcome.SUCCEEDED)
            if watched:
                return future
            set_outcome(future, UNFETCHED)  # the value stays on its worker until read
        elif exc is not None and not lost:
            self._stats.task_finished(Outcome.FAILED)
            set_outcome(call.future, None, exc)
        elif exc is not None:
            self._stats.task_finished(Outcome.FAILED)
            set_outcome(call.future, None, self._poisoned(call, exc))
        else:
            self._stats.task_finished(Outcome.CANCELLED)
            set_outcome(
                call.future,
                None,
                TaskLostError(
                    f"call {call.id} of {self.name!r} was cancelled on the Dask cluster "
                    "(by another client, or the scheduler lost it)"
                ),
            )
        return None

    def _poisoned(self, call: Call, exc: BaseException) -> PoisonedCallError:
        records: list[tuple[str, float, float]] = []
        try:
            for attempt in call.attempts:
                records.extend(self.client.run_on_scheduler(lost_attempts, key=attempt.key))
        except Exception:  # an old or unusual scheduler: fall back to what the error says
            records = []
        if not records:
            records = [(str(getattr(getattr(exc, "last_worker", None), "address", "?")), 0, 0)]
        self._lost[call.id] = records
        return poisoned_error(
            f"call {call.id} of {self.name!r}", records, "by Dask: the scheduler's allowed-failures"
        )

    # -- values ---------------------------------------------------------------------

    def _cancel_call(self, future: EngineFuture) -> None:
        with self._lock:
            call = self._calls.pop(future.call_id, None)
            if call is None or call.finished:
                return
            call.finished = True
            engines = [a.engine for a in call.attempts]
        self._stats.task_finished(Outcome.CANCELLED)
        self.client.cancel(engines, reason="cancelled by the caller")

    # -- BaseExecutor hooks ---------------------------------------------------------

    def _cancel_queued(self) -> int:
        try:
            processing = {str(k) for keys in self.client.processing().values() for k in keys}
        except Exception:
            processing = set()
        with self._lock:
            queued = [
                c.future
                for c in self._calls.values()
                if not any(a.key in processing for a in c.attempts)
            ]
        return sum(1 for f in queued if f.cancel())

    def _shutdown_impl(self, *, wait: bool, cancel_futures: bool) -> None:
        if cancel_futures:
            self._cancel_queued()
        if wait:
            self._join()
        self._stop_threads()
        self._wake.set()
        self._completed.put(None)
        if wait:
            self._completer.join()
        else:  # prefetches may come after the completion thread stops: unread from now on
            with self._lock:
                left, self._prefetching = list(self._prefetching), set()
            self._complete_fetched(Fetched(left, [UNFETCHED] * len(left)))
        if wait and self._heartbeat is not None:
            self._heartbeat.join()
        if self._owns_client:
            if not wait:
                for future in self._live_futures():
                    future.cancel()
            self._fetch_unread()
            self.client.close()
            if self._cluster is not None:
                self._cluster.close()

    def _live_futures(self) -> list[EngineFuture]:
        with self._lock:
            return [c.future for c in self._calls.values()] + list(self._prefetching)


def _dropped(*_: Any, **__: Any) -> None:  # what a finished call keeps instead of its function
    return None


def _is_killed_worker(exc: BaseException | None) -> bool:
    return type(exc).__name__ == "KilledWorker"
