"""How ``DaskExecutor`` brings values back from the workers: few, batched ``gather`` calls.

A finished call's value stays on its worker, as a Dask future's does, until it
is read: the first ``result()`` then gathers the values of every finished call
not read yet in one round trip (``_fetch``). Calls that someone waits on with a
done-callback when they finish (``await``, ``wait_all``, ``add_done_callback``,
calls with retries) have their values brought before they complete, one round
trip per batch of completions (``_prefetch``), so that the callbacks' reads cost
nothing and an asyncio loop awaiting them never blocks.

No value fetch can stall other calls: a worker may be slow or frozen (SIGSTOP,
swapping) while it holds a value. The batch of a prefetch is gathered on Dask's
event loop, not by the completion thread, and bounded (``_PATIENCE``); past it,
each value of the batch is gathered alone, so only the calls whose worker does not
answer stay pending (``result(timeout)`` on one of them raises TimeoutError); the
values come back to the completion thread, which completes their futures (their
callbacks never run on the event loop). A read's batch gather is bounded the same
way; past it the reader gathers its own value alone, outside ``_fetch_lock``.

Reads that follow each other while calls are still running are coalesced: a
gather that would start less than a window after the previous one ended first
waits for the rest of the window (ten round trips of the previous gather, at
most ``_WINDOW_MAX``), or until no call is running, so that values finishing
meanwhile come in the same gather. Without it a reader keeping pace with the
cluster (``[f.result() for f in futures]``) makes a round trip per value or two,
and those round trips cost the scheduler and workers as much as the calls
themselves: 2,000 no-op calls made ~700 gathers and ran 1.2-1.3x slower than
``client.gather`` of all of them, against ~100-200 gathers and no measurable
slowdown with the window. A read after a quiet moment (or with no call running)
gathers at once; a read in a stream waits at most one window.

Locks: ``_fetch_lock`` makes readers' gathers one at a time (so that no value is
gathered twice: a reader finds its value brought by another's batch) and is
taken before ``_lock``; neither is held while a future is completed. A prefetch
needs neither: its futures are not done, so no reader can ask for their values.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from ._dask_scheduler import Attempt, Call, DaskScheduler
from ._engine_base import set_outcome
from ._engine_future import UNFETCHED, EngineFuture

__all__ = ["DaskValues", "Fetched"]

logger = logging.getLogger("parallelize")

_WINDOW_ROUND_TRIPS = 10  # a window is this many round trips of the previous gather
_WINDOW_MAX = 0.05  # seconds: the longest a read in a stream waits for others
# Seconds a batch gather may take before its values are gathered one by one (a worker
# holding one of them may be frozen): the longer of this and ten of the previous gather.
_PATIENCE = 2.0
_ALONE: Any = object()  # a reader's batch did not come: it gathers its own value alone


@dataclass(eq=False)
class Fetched:
    """Prefetched values for the completion thread to complete their futures with
    (``UNFETCHED``: the gather failed, e.g. the value was lost: the reader fetches it)."""

    futures: list[EngineFuture]
    values: list[Any]


class DaskValues(DaskScheduler):
    """The value-gathering layer of the Dask executor (state set up by ``_init_values``)."""

    _unread: weakref.WeakValueDictionary[int, EngineFuture]
    _fetch_lock: threading.Lock
    _gather_end: float
    _gather_seconds: float
    _idle: threading.Event
    _prefetching: set[EngineFuture]
    _completed: queue.SimpleQueue[tuple[Call, Attempt] | Fetched | None]

    def _init_values(self) -> None:
        # Finished calls whose value is still on a worker, gathered together at the first
        # read. Weak: a future nobody holds any more is never read, and its Dask future
        # (so the value on the worker) is released with it.
        self._unread = weakref.WeakValueDictionary()
        self._fetch_lock = threading.Lock()
        self._gather_end = -1e9  # monotonic end of the latest gather
        self._gather_seconds = 0.0  # how long it took
        # Set while no call is running (under ``_lock``, with ``_calls``): ends a window.
        self._idle = threading.Event()
        self._idle.set()
        # Finished calls whose values are being prefetched (their futures still pending).
        self._prefetching = set()
        self._prefetches: set[asyncio.Future[None]] = set()  # touched on the event loop only

    def _wait_for_window(self) -> None:
        """Wait for the rest of the coalescing window, unless (or until) no call runs."""
        window = min(_WINDOW_MAX, _WINDOW_ROUND_TRIPS * self._gather_seconds)
        left = self._gather_end + window - time.monotonic()
        if left > 0:
            self._idle.wait(left)

    def _patience(self) -> float:
        return max(_PATIENCE, _WINDOW_ROUND_TRIPS * self._gather_seconds)

    def _gather(self, futures: list[EngineFuture], bound: float) -> list[Any]:
        """The values of *futures* in one round trip (``_fetch_lock`` held); TimeoutError
        past *bound* seconds."""
        start = time.monotonic()
        try:
            return list(
                self.client.sync(
                    self.client._gather,
                    [f.engine_future for f in futures],
                    callback_timeout=bound,
                )
            )
        finally:
            self._gather_end = time.monotonic()
            self._gather_seconds = self._gather_end - start

    def _fetch(self, future: EngineFuture, timeout: float | None = None) -> Any:
        """The value of the finished call of *future*, gathered with those of all finished
        calls not read yet (chained calls' values stay on the workers).

        With a *timeout* (``result(timeout)``) it is bounded: the wait for another reader's
        gather, the batch gather (within half of what is left, at most ``_patience()``),
        then, if the batch did not come, this value alone within the rest. (Fetched alone,
        2,000 reads with a timeout made 2,000 round trips: 1.75x ``client.gather``.)"""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._fetch_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(
                f"call {future.call_id}: its value was not brought from its worker within "
                f"{timeout:g} s (another read was still gathering)"
            )
        try:
            if future.fetched is not UNFETCHED:  # it came with another reader's batch
                return future.fetched
            value = self._fetch_batch(future, deadline)
        finally:
            self._fetch_lock.release()
        if value is _ALONE:  # this value's own worker only, within what is left
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            value = future.engine_future.result(timeout=left)  # or TimeoutError, or its error
            future.fetched = value
        return value

    def _fetch_batch(self, future: EngineFuture, deadline: float | None = None) -> Any:
        """*future*'s value with those of every finished call not read yet (lock held), or
        ``_ALONE`` if the batch did not come (by *deadline*'s half-way mark)."""
        self._wait_for_window()
        with self._lock:
            batch = [
                f
                for f in self._unread.values()
                if not f.used_as_argument and f.fetched is UNFETCHED  # (read with a timeout)
            ]
            self._unread.clear()
        if future not in batch:  # chained, or its batch failed before
            batch.append(future)
        bound = self._patience()
        if deadline is not None:
            bound = min(bound, max(0.001, (deadline - time.monotonic()) / 2))
        try:
            values = self._gather(batch, bound)
        except Exception:  # one value lost with its worker, or a worker that does not answer
            logger.debug("%s: batched gather failed", self.name, exc_info=True)
            with self._lock:
                for other in batch:
                    if other is not future and other.fetched is UNFETCHED:
                        self._unread[other.call_id] = other
            return _ALONE  # the others stay unread; this one comes alone, outside the lock
        for fetched, value in zip(batch, values, strict=True):
            fetched.fetched = value
        return future.fetched

    def _prefetch(self, futures: list[EngineFuture]) -> None:
        """Bring the values of finished calls someone waits on with a callback, then have the
        completion thread complete them (a ``Fetched``): the callbacks read them at once.
        The gathers run on Dask's event loop; the completion thread goes on meanwhile."""
        with self._lock:
            self._prefetching.update(futures)
        self.client.loop.add_callback(self._start_prefetch, futures)

    def _start_prefetch(self, futures: list[EngineFuture]) -> None:  # on the loop
        task = asyncio.ensure_future(self._prefetch_on_loop(futures))
        self._prefetches.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._prefetches.discard)

    async def _prefetch_on_loop(self, futures: list[EngineFuture]) -> None:  # on the loop
        values = await self._gather_within_patience(futures)
        if values is not None:
            self._completed.put(Fetched(futures, values))
            return
        # A worker holding some of them does not answer: gather by worker, in turn, so
        # that only the calls whose values that worker holds stay pending.
        logger.debug("%s: prefetch of %d values timed out", self.name, len(futures))
        try:
            who_has = await asyncio.wait_for(
                self.client.scheduler.who_has(keys=[f.engine_future.key for f in futures]),
                self._patience(),
            )
        except Exception:
            who_has = {}
        by_worker: dict[str, list[EngineFuture]] = {}
        for future in futures:
            holders = sorted(who_has.get(future.engine_future.key) or ["?"])
            by_worker.setdefault(str(holders[0]), []).append(future)
        for group in by_worker.values():
            values = await self._gather_within_patience(group)
            if values is not None:
                self._completed.put(Fetched(group, values))

    async def _gather_within_patience(self, futures: list[EngineFuture]) -> list[Any] | None:
        """Their values (``UNFETCHED`` each if the gather failed), or None if it took over
        ``_patience()``: then the gather goes on, and completes them when it ends."""
        start = time.monotonic()
        task = asyncio.ensure_future(self.client._gather([f.engine_future for f in futures]))
        try:
            values = list(await asyncio.wait_for(asyncio.shield(task), self._patience()))
        except asyncio.TimeoutError:
            task.add_done_callback(lambda done: self._late(futures, done))
            return None
        except Exception:  # e.g. a value lost with its worker: each result() fetches alone
            logger.debug("%s: prefetch failed", self.name, exc_info=True)
            return [UNFETCHED] * len(futures)
        self._gather_seconds = time.monotonic() - start
        return values

    def _late(self, futures: list[EngineFuture], task: asyncio.Future[Any]) -> None:
        """A gather that ran out of patience ended (its worker woke, or is gone)."""
        if task.cancelled() or task.exception() is not None:
            values = [UNFETCHED] * len(futures)
        else:
            values = list(task.result())
        self._completed.put(Fetched(futures, values))

    def _complete_fetched(self, fetched: Fetched) -> None:
        """Complete the futures of a prefetch (the completion thread)."""
        with self._lock:
            self._prefetching.difference_update(fetched.futures)
        for future, value in zip(fetched.futures, fetched.values, strict=True):
            if future.done():  # brought by an earlier gather (or cancelled by its caller)
                continue
            if value is not UNFETCHED:
                future.fetched = value
            else:
                with self._lock:
                    self._unread[future.call_id] = future
            set_outcome(future, value)

    def _fetch_unread(self) -> None:
        """Gather every value not read yet (before the client closes: none is lost)."""
        with self._lock:
            unread = [f for f in self._unread.values() if f.fetched is UNFETCHED]
        if unread:
            try:
                self._fetch(unread[0])  # brings the whole batch
            except Exception:
                logger.debug("%s: gathering unread values failed", self.name, exc_info=True)
