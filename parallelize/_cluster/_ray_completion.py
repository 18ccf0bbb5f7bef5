"""How the Ray executor completes calls: one completion thread, batched ``ray.wait``/``ray.get``.

The middle layer of :class:`~._ray.RayExecutor` (which holds the state and submits):
the completion thread waits for the live ObjectRefs in batches (``ray.wait`` on the
oldest refs and a slice of the others in turn, see ``_WINDOW_MIN``), fetches the
ready ones' results in one ``ray.get``, settles the call table in one critical
section per batch and completes the futures. A callback per ref would run Ray's
callback thread once per call, competing with the threads that submit.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from typing import Any

from .._errors import TaskLostError
from .._stats import Outcome
from ._engine_base import set_outcome
from ._ray_backups import Call, RayBackups
from ._ray_outcomes import RawAttempt, caller_error, is_lost, is_record, raw_attempt

__all__ = ["RayCompletion"]

logger = logging.getLogger("parallelize")
# Seconds a ray.wait lasts at most (it returns sooner when every ref in it is ready). While
# every watched ref fits in one wait, a short one: a call submitted meanwhile joins the next
# wait that soon. With a backlog (calls queued for a CPU), new refs would wait their turn
# anyway, so a longer one: fewer, fuller batches (each wait and get has a fixed cost of some
# 100-250 us of this thread, which shares the GIL and the CPUs with the submitting threads).
# The cost: a call that finishes out of turn behind the oldest window is seen when its slice
# comes round, up to (backlog / window) waits later, where 10 ms waits would see it 5x sooner.
# Measured on 2,000 no-op calls on 2 CPUs: this thread's CPU 0.21-0.23 s at 10 ms, 0.12 s at
# 50 ms; batches of 14 calls on average, then 53.
_WAIT = 0.01
_WAIT_BACKLOG = 0.05
# Refs per ray.wait: the oldest ones (where the running calls are) and as many others in
# turn (a call finishing out of order there is seen within a few rounds). A wait costs
# about 3 us per ref, a ray.get some 250 us plus its values: the window follows how
# many refs finish per wait, from _WINDOW_MIN (at least twice the CPUs) up to
# _WINDOW_MAX, doubling when half of it was ready and halving when under a quarter was.
# (A fixed 64 + 64 refs cost 2,000 no-op calls on 2 CPUs ~65 ms of the thread's CPU in
# waits, where ~11 refs finished per wait.)
_WINDOW_MIN = 16
_WINDOW_MAX = 1024

# An attempt seen finished: (ref, call, pinned node, what it returned, its error).
_Outcome = tuple[Any, Call, "str | None", "list[Any] | None", "BaseException | None"]


class RayCompletion(RayBackups):
    """The completion layer of :class:`RayExecutor` (its state is set up there)."""

    _to_watch: list[tuple[Any, Call, str | None]]
    _watch_wake: threading.Event
    _unbuilt: list[RawAttempt]
    _epoch: float
    _epoch_wall: float
    max_retries: int

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
            if len(watched) > window:  # the oldest, and the next slice of the others in turn
                first = (turn * window) % (len(watched) - window)
                oldest = iter(watched)  # no copy of every watched ref per wait
                refs = list(itertools.islice(oldest, window))
                refs += itertools.islice(oldest, first, first + window)
                turn += 1
            else:
                refs = list(watched)
            try:
                wait = _WAIT_BACKLOG if len(watched) > len(refs) else _WAIT
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
        decided: list[tuple[Call, list[Any] | None, BaseException | None, list[Any]]] = []
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
        got: list[Any] | None,
        exc: BaseException | None,
        end: float,
    ) -> list[Any] | None:
        """Record the finished attempt *ref* of *call* (``_lock`` held); if it decides the
        call, mark it finished and return the copies to cancel, else None."""
        lost = exc is not None and is_lost(exc)
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
        self, call: Call, got: list[Any] | None, exc: BaseException | None, losers: list[Any]
    ) -> None:
        call.fn, call.args, call.kwargs = _dropped, (), {}
        if losers and not call.future.used_as_argument:
            self._kill(losers)
        if exc is None and is_record(got):
            self._stats.task_finished(Outcome.SUCCEEDED)
            call.future.fetched = got[0]
            set_outcome(call.future, got[0])
            return
        self._stats.task_finished(Outcome.FAILED)
        if exc is None:  # a task that returned something other than a record: a bug
            exc = TaskLostError(f"call {call.future.call_id}: its task returned no record")
        error = caller_error(call.future.call_id, self.name, self.max_retries, exc)
        set_outcome(call.future, None, error)

    def _record(
        self,
        call: Call,
        end: float,
        outcome: str,
        node: str | None,
        backup: bool,
        got: list[Any] | None,
    ) -> None:
        """Record an attempt (``_lock`` held; its row is built by ``stats()``)."""
        span = (call.submitted - self._epoch, end - self._epoch)
        self._unbuilt.append(raw_attempt(call.future.call_id, outcome, backup, got, span, node))
        if outcome == "won":
            self._durations.append(end - call.submitted)

    def _kill(self, refs: list[Any]) -> None:
        import ray

        for ref in refs:
            try:
                ray.cancel(ref, force=True)  # kills the worker process if it runs
            except Exception:  # already finished, or its worker is gone
                logger.debug("%s: ray.cancel failed", self.name, exc_info=True)


def _dropped(*_: Any, **__: Any) -> None:  # what a finished call keeps instead of its function
    return None
