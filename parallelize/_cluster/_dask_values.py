"""How ``DaskExecutor`` brings values back from the workers: few, batched ``gather`` calls.

A finished call's value stays on its worker, as a Dask future's does, until it
is read: the first ``result()`` then gathers the values of every finished call
not read yet in one round trip (``_fetch``). Calls that someone waits on with a
done-callback when they finish (``await``, ``wait_all``, ``add_done_callback``,
calls with retries) are gathered by the completion thread before they complete,
one round trip per batch of completions (``_complete_watched``), so that the
callbacks' reads cost nothing and an asyncio loop awaiting them never blocks.

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

Locks: ``_fetch_lock`` makes gathers one at a time (so that no value is
gathered twice: a reader finds its value brought by another's batch) and is
taken before ``_lock``; neither is held while a future is completed.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from ._dask_scheduler import DaskScheduler
from ._engine_base import set_outcome
from ._engine_future import UNFETCHED, EngineFuture

__all__ = ["DaskValues"]

logger = logging.getLogger("parallelize")

_WINDOW_ROUND_TRIPS = 10  # a window is this many round trips of the previous gather
_WINDOW_MAX = 0.05  # seconds: the longest a read in a stream waits for others


class DaskValues(DaskScheduler):
    """The value-gathering layer of the Dask executor (state set up by ``_init_values``)."""

    _unread: weakref.WeakValueDictionary[int, EngineFuture]
    _fetch_lock: threading.Lock
    _gather_end: float
    _gather_seconds: float

    def _init_values(self) -> None:
        # Finished calls whose value is still on a worker, gathered together at the first
        # read. Weak: a future nobody holds any more is never read, and its Dask future
        # (so the value on the worker) is released with it.
        self._unread = weakref.WeakValueDictionary()
        self._fetch_lock = threading.Lock()
        self._gather_end = -1e9  # monotonic end of the latest gather
        self._gather_seconds = 0.0  # how long it took

    def _wait_for_window(self) -> None:
        """Wait for the rest of the coalescing window while calls are running."""
        window = min(_WINDOW_MAX, _WINDOW_ROUND_TRIPS * self._gather_seconds)
        deadline = self._gather_end + window
        while self._calls:  # a dict's truth needs no lock
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.005))

    def _gather(self, futures: list[EngineFuture]) -> list[Any]:
        """The values of *futures* in one round trip (``_fetch_lock`` held)."""
        start = time.monotonic()
        try:
            return list(self.client.gather([f.engine_future for f in futures]))
        finally:
            self._gather_end = time.monotonic()
            self._gather_seconds = self._gather_end - start

    def _fetch(self, future: EngineFuture, timeout: float | None = None) -> Any:
        """The value of the finished call of *future*, gathered with those of all finished
        calls not read yet (chained calls' values stay on the workers).

        With a *timeout* (``result(timeout)``) it is bounded: the wait for another reader's
        gather, then this value alone (a batch gather cannot be bounded), within it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._fetch_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(
                f"call {future.call_id}: its value was not brought from its worker within "
                f"{timeout:g} s (another read was still gathering)"
            )
        try:
            if future.fetched is not UNFETCHED:  # it came with another reader's batch
                return future.fetched
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                future.fetched = future.engine_future.result(timeout=left)  # or TimeoutError
                return future.fetched
            return self._fetch_batch(future)
        finally:
            self._fetch_lock.release()

    def _fetch_batch(self, future: EngineFuture) -> Any:
        """*future*'s value with those of every finished call not read yet (lock held)."""
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
        try:
            values = self._gather(batch)
        except Exception:  # e.g. one value lost with its worker: the others stay unread
            logger.debug("%s: batched gather failed", self.name, exc_info=True)
            with self._lock:
                for other in batch:
                    if other is not future and other.fetched is UNFETCHED:
                        self._unread[other.call_id] = other
            return self.client.gather(future.engine_future)  # raises what went wrong
        for fetched, value in zip(batch, values, strict=True):
            fetched.fetched = value
        return future.fetched

    def _complete_watched(self, futures: list[EngineFuture]) -> None:
        """Gather the values of finished calls someone waits on with a callback (one round
        trip), then complete them: the callbacks then read the values at once. (The
        completion thread waits for the window first, see ``_wait_for_window``.)"""
        with self._fetch_lock:
            try:
                values = self._gather(futures)
            except Exception:  # e.g. a value lost with its worker: each result() fetches alone
                logger.debug("%s: batched gather failed", self.name, exc_info=True)
                values = [UNFETCHED] * len(futures)
            for future, value in zip(futures, values, strict=True):
                if value is not UNFETCHED:
                    future.fetched = value
        for future, value in zip(futures, values, strict=True):
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
