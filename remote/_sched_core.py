"""The REMOTE scheduler's state and its bundle bookkeeping (see ``_scheduler`` for the
threading model: everything here runs on the scheduler thread only).

``SchedulerCore`` holds every piece of scheduler state and the transitions of bundles and
attempts: starting and ending attempts, results, lost attempts, poisoning, completing
futures. Host health (``_sched_hosts``) and dispatch and speculation (``_sched_dispatch``)
build on it; ``_scheduler.Scheduler`` adds the thread, the loop, status and teardown.

It is a little over 400 lines because every piece of state the chain shares is declared
here, in one place, with who owns it; the direct lane's side is ``_sched_lane``.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any, cast

from parallelize import AttemptRecord, ParallelizeError, PoisonedCallError
from parallelize.ext import Outcome, TaskStats, failure_exception
from smart_future import StoppableFuture

from ._attempt_log import AttemptLog, FloatRing, RateWindow
from ._bundle import Attempt, AttemptState, Bundle, BundleState
from ._errors import HostUnavailableError
from ._host_table import HostTable
from ._hosts import Host
from ._lane import DirectLane, LaneFailure
from ._link import Delivered, HostLink, HostSpec, LocalCallLink
from ._policies import SelectionPolicy
from ._remote_future import RemoteFuture
from ._sched_util import copy_error, logger, settle, start
from ._speculation import SpeculationConfig

__all__ = ["FN_IDS", "LinkFactory", "SchedulerCore"]

LinkFactory = Callable[[HostSpec], HostLink]

_GLOBAL_SAMPLES = 5000
_RATE_WINDOW = 30.0  # seconds of completions used for the ETA
FN_IDS = 1024  # distinct function payloads remembered (LRU) for their ids


# The attempt log stores outcomes by name (an enum member's .value is a slow property).
_OUTCOME_NAMES = {state: state.value for state in AttemptState}


class SchedulerCore:
    """Scheduler state and bundle/attempt bookkeeping (scheduler thread only)."""

    def __init__(
        self,
        specs: Sequence[HostSpec],
        link_factory: LinkFactory,
        *,
        policy: SelectionPolicy,
        stats: TaskStats,
        name: str = "remote",
        heartbeat_interval: float = 5.0,
        backups: bool = True,
        max_backups_per_bundle: int = 2,
        backup_budget: float = 0.1,
        max_attempts: int = 3,
        host_down_timeout: float = 60.0,
        timeline_limit: int = 10_000,
        timeout_grace: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not specs:
            raise ValueError("the pool has no hosts")
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if host_down_timeout <= 0:
            raise ValueError("host_down_timeout must be positive")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"host names in the pool must be unique: {names}")
        self.name = name
        self._clock = clock
        self._link_factory = link_factory
        self._policy = policy
        self._stats = stats
        self._heartbeat_interval = heartbeat_interval
        self._spec = SpeculationConfig(
            enabled=backups,
            max_backups_per_bundle=max(0, max_backups_per_bundle),
            budget=backup_budget,
        )
        self._max_attempts = max_attempts
        self._host_down_timeout = host_down_timeout
        # The agent enforces a call's timeout; the controller gives up on its own this much
        # later (a stalled link may never deliver the agent's TIMED_OUT): the stall allowance.
        self._timeout_grace = timeout_grace

        self._q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        # --- state below is owned by the scheduler thread -----------------
        self._hosts = [Host(spec, i) for i, spec in enumerate(specs)]
        self._table = HostTable(self._hosts)
        self._policy.prepare(self._hosts)
        self._pending: deque[Bundle] = deque()
        self._n_pending = 0
        self._rescue: deque[Bundle] = deque()  # running only on SUSPECT hosts: back up first
        self._running: dict[int, Bundle] = {}  # bundle id -> RUNNING bundle
        self._attempts: dict[int, tuple[Attempt, Bundle, Host]] = {}
        self._to_flush: set[Host] = set()  # hosts whose local link has attempts to send
        self._deadlines: list[tuple[float, int]] = []  # heap: (fallback deadline, attempt id)
        # Shared with the direct lane, which numbers its attempts on callers' threads
        # (next() on a count is atomic).
        self._attempt_ids = itertools.count(1)
        self._fn_ids: OrderedDict[bytes, int] = OrderedDict()
        self._next_fn_id = 1
        self._submitted = 0
        self._counts = {state: 0 for state in BundleState if state.terminal}
        self._backups_started = 0
        self._speculative_started = 0
        self._backups_won = 0
        self._durations = FloatRing(_GLOBAL_SAMPLES)
        self._completions = RateWindow(_RATE_WINDOW)
        self._attempt_log = AttemptLog(timeline_limit)
        self._no_host_since: float | None = None
        self._t0 = self._clock()
        self._next_heartbeat = self._t0 + heartbeat_interval
        self._next_speculation: float | None = None
        self._speculation_scan_at = 0.0
        self._last_logged: tuple[int, int, int] | None = None
        self._stopping = False
        self._aborting: str | None = None
        # --- shared with connect threads and callers -----------------------
        self._closed = False
        self._closed_lock = threading.Lock()
        # A one-host pool may run its calls on the direct lane (remote/_lane.py) while
        # that host is UP on a ProcessLink; the scheduler opens and closes it.
        self._lane: DirectLane | None = None
        self._lane_rows: dict[int, int] = {}  # worker pid -> its timeline row
        self._lane_row_ends: list[float] = []  # per row: when its last call ended
        if len(self._hosts) == 1:
            self._lane = DirectLane(
                stats,
                self._q.put,
                self._adopt_lane,
                self._attempt_ids,
                self._clock,
            )
        self._start()

    def _start(self) -> None:
        """Start running (the Scheduler starts its thread here)."""

    def _has_work(self) -> bool:
        return bool(self._n_pending or self._running or self._lane_in_flight())

    def _lane_in_flight(self) -> int:
        lane = self._lane
        return 0 if lane is None else lane.in_flight

    def _function_id(self, payload: bytes) -> int:
        """The id of a function payload (its agent caches the function under it)."""
        fn_id = self._fn_ids.get(payload)
        if fn_id is None:
            if len(self._fn_ids) >= FN_IDS:  # many distinct lambdas: forget the oldest
                self._fn_ids.popitem(last=False)
            fn_id = self._fn_ids[payload] = self._next_fn_id
            self._next_fn_id += 1
        else:
            self._fn_ids.move_to_end(payload)
        return fn_id

    def _host_down(self, host: Host, reason: str, now: float) -> None:
        raise NotImplementedError  # host health: see _sched_hosts

    def _adopt_lane(self, failure: LaneFailure) -> None:
        raise NotImplementedError  # the direct lane: see _sched_lane

    def _on_lane_done(self) -> None:
        raise NotImplementedError  # the direct lane's bookings: see _sched_lane

    @property
    def lane(self) -> DirectLane | None:
        """The direct lane of a one-host pool (callers submit through it when open)."""
        return self._lane

    def _host_of(self, attempt: Attempt) -> Host:
        return self._attempts[attempt.id][2]

    def _start_attempt(self, bundle: Bundle, host: Host, now: float, *, is_backup: bool) -> None:
        future = bundle.future
        # A prefetching link (the embedded pool) marks the caller's future running itself,
        # when the attempt starts in a worker rather than waits behind another there.
        caller = (
            future
            if host.prefetches and not is_backup and isinstance(future, StoppableFuture)
            else None
        )
        if (
            not is_backup
            and not future.running()
            and (
                future.cancelled() or (caller is None and not future.set_running_or_notify_cancel())
            )
        ):
            # cancelled while queued (its cancel message may still be on its way): drop it
            if not bundle.state.terminal:
                self._finish(bundle, BundleState.CANCELLED, now)
            return
        if caller is not None and caller.running():
            caller = None  # a retry: it has run before
        limit = bundle.timeout
        if limit is not None and is_backup:  # the call's clock runs from its oldest copy
            oldest = min((a.start for a in bundle.running_attempts), default=now)
            limit = max(limit - (now - oldest), 0.001)
        attempt_id = next(self._attempt_ids)
        attempt = bundle.start_attempt(
            attempt_id, host.name, self._table.take_slot(host), now, is_backup=is_backup
        )
        self._running[bundle.id] = bundle
        host.running[attempt_id] = attempt
        host.last_start = now
        self._attempts[attempt_id] = (attempt, bundle, host)
        if is_backup:
            self._backups_started += 1
            logger.info(
                "%s: backup of bundle %d (%s) on %s, running for %.3gs",
                self.name,
                bundle.id,
                bundle.fn_name,
                host.name,
                now - min(a.start for a in bundle.attempts if a is not attempt),
            )
        link = host.link
        if link is None or bundle.fn_id is None:  # an invariant of UP hosts and bundles
            raise RuntimeError(f"attempt {attempt_id} started on {host!r} with no link")
        try:
            if bundle.local_call is not None:  # only ever sent to ProcessLinks (see _executor)
                # No fallback deadline: the PROCESS pool's own timer enforces the timeout
                # from when the attempt starts (there is no network to stall), and an
                # attempt may wait behind others there first.
                cast(LocalCallLink, link).submit_local(attempt_id, bundle.local_call, limit, caller)
                self._to_flush.add(host)
            elif limit is None:
                link.submit(attempt_id, bundle.fn_id, bundle.fn_payload, bundle.args_payload)
            else:
                heapq.heappush(self._deadlines, (now + limit + self._timeout_grace, attempt_id))
                link.submit(
                    attempt_id, bundle.fn_id, bundle.fn_payload, bundle.args_payload, timeout=limit
                )
        except Exception as exc:
            self._host_down(host, f"could not send an attempt: {type(exc).__name__}: {exc}", now)

    def _end_attempt(
        self, attempt: Attempt, host: Host, state: AttemptState, now: float, reason: str = ""
    ) -> None:
        attempt.finish(state, now, reason)
        del self._attempts[attempt.id]
        del host.running[attempt.id]
        self._table.release_slot(host, attempt.slot)
        self._attempt_log.add(
            attempt.bundle_id,
            attempt.id,
            attempt.host,
            attempt.slot % host.slots,  # (ids past ``slots`` are queue places: see _hosts)
            attempt.start - self._t0,
            now - self._t0,
            _OUTCOME_NAMES[state],
            attempt.is_backup,
            reason,
        )

    def _cancel_attempts(self, bundle: Bundle, now: float, reason: str) -> None:
        for attempt in bundle.running_attempts:
            _, _, host = self._attempts[attempt.id]
            self._end_attempt(attempt, host, AttemptState.CANCELLED, now, reason)
            if host.link is not None and host.state.connected:
                try:
                    host.link.cancel(attempt.id)
                except Exception as exc:
                    logger.debug(
                        "cancel of attempt %d on %s failed: %s", attempt.id, host.name, exc
                    )

    def _on_result(
        self, host: Host, attempt_id: int, ok: bool, payload: bytes | Delivered, duration: float
    ) -> None:
        entry = self._attempts.get(attempt_id)
        if entry is None:
            return  # a loser or a cancelled attempt that finished anyway
        attempt, bundle, _ = entry
        now = self._clock()
        if isinstance(payload, Delivered) and host.prefetches:
            # It may have waited at the host behind other calls since it was sent: it
            # started about when the worker says (same machine, same clock), which is what
            # the timeline and the host's speed estimate should see.
            attempt.start = max(attempt.start, now - duration)
        future = bundle.future
        won = not future.cancelled() and start(future)
        self._end_attempt(
            attempt,
            host,
            AttemptState.WON if won else AttemptState.CANCELLED,
            now,
            "" if won else "cancelled by the user",
        )
        elapsed = now - attempt.start
        host.record_duration(elapsed)
        if host.record_run(duration):
            self._table.reindex(host)
        self._durations.append(elapsed)
        if attempt.is_backup and won:
            self._backups_won += 1
        if len(bundle.attempts) > 1:  # backups or retries: copies may still be running
            for loser in bundle.running_attempts:  # what they ran: a floor on their host's pace
                self._host_of(loser).record_censored(now - loser.start)
            self._cancel_attempts(bundle, now, f"lost the race to attempt {attempt_id}")
        if not won:
            self._finish(bundle, BundleState.CANCELLED, now)
            return
        if isinstance(payload, Delivered):  # a local link's result: the value itself
            if ok:
                self._finish(
                    bundle, BundleState.SUCCEEDED, now, value=payload.value, duration=duration
                )
            else:  # decoded by the PROCESS pool, which names the host (ProcessLink)
                self._finish(bundle, BundleState.FAILED, now, exc=payload.value, duration=duration)
            return
        if not ok:  # the outcome codec's failure, decoded as PROCESS decodes it
            error = failure_exception(payload, bundle.fn_name, f"host {host.name!r}", host.name)
            self._finish(bundle, BundleState.FAILED, now, exc=error, duration=duration)
            return
        try:
            value = pickle.loads(payload)
        except BaseException as exc:
            unreadable = ParallelizeError(
                f"{bundle.fn_name}: the result sent back by host {host.name} could not be "
                f"unpickled here ({type(exc).__name__}: {exc})"
            )
            unreadable.__cause__ = exc
            self._finish(bundle, BundleState.FAILED, now, exc=unreadable, duration=duration)
            return
        self._finish(bundle, BundleState.SUCCEEDED, now, value=value, duration=duration)

    def _on_lost(self, host: Host, attempt_id: int, reason: str) -> None:
        entry = self._attempts.get(attempt_id)
        if entry is None:
            return
        attempt, bundle, _ = entry
        now = self._clock()
        self._end_attempt(attempt, host, AttemptState.LOST, now, reason)
        host.lost += 1
        logger.warning(
            "%s: attempt %d of bundle %d (%s) lost on host %s: %s",
            self.name,
            attempt_id,
            bundle.id,
            bundle.fn_name,
            host.name,
            reason,
        )
        self._attempt_failed(bundle, now)

    def _attempt_failed(self, bundle: Bundle, now: float) -> None:
        """An attempt of *bundle* was lost: poison it, re-queue it, or let a copy carry on."""
        if bundle.state is not BundleState.RUNNING:
            return
        lost = bundle.lost_attempts
        if len(lost) >= self._max_attempts:
            self._cancel_attempts(bundle, now, "the bundle was poisoned")
            details = "; ".join(
                f"attempt {i} on host {a.host}: {a.reason}" for i, a in enumerate(lost, 1)
            )
            error = PoisonedCallError(
                f"{bundle.fn_name} was given up after {len(lost)} infrastructure failures "
                f"(max_attempts={self._max_attempts}; the call probably kills its worker "
                f"process): {details}",
                tuple(AttemptRecord(a.host, a.reason, a.duration) for a in lost),
            )
            logger.error("%s: bundle %d poisoned: %s", self.name, bundle.id, error)
            self._finish(bundle, BundleState.POISONED, now, exc=error)
        elif not bundle.running_attempts:
            bundle.transition(BundleState.PENDING, now)
            del self._running[bundle.id]
            self._pending.appendleft(bundle)
            self._n_pending += 1

    def _on_cancel(self, bundle: Bundle) -> None:
        if bundle.state.terminal:
            return
        now = self._clock()
        if bundle.state is BundleState.PENDING:
            self._n_pending -= 1
        else:
            self._cancel_attempts(bundle, now, "cancelled by the user")
        self._finish(bundle, BundleState.CANCELLED, now)

    def _finish(
        self,
        bundle: Bundle,
        state: BundleState,
        now: float,
        *,
        value: Any = None,
        exc: BaseException | None = None,
        duration: float | None = None,
    ) -> None:
        """Move *bundle* to a terminal state and complete its future (once)."""
        was_running = bundle.state is BundleState.RUNNING
        bundle.transition(state, now)
        if was_running:
            del self._running[bundle.id]
        self._counts[state] += 1
        self._completions.add(now)
        future = bundle.future
        if type(future) is RemoteFuture:
            # The future and its bundle point at each other (its cancel() tells the
            # scheduler). Terminal, the bundle ignores a cancel: let go of it before the
            # caller can wake, so that dropping the future frees both by reference counting
            # instead of leaving them to the cyclic GC, whose full passes then walked every
            # finished call (16 us per call of GC time, 10,000 embedded no-op calls).
            future.bundle = None
        if state is BundleState.CANCELLED:
            future.cancel()
            self._stats.task_finished(Outcome.CANCELLED, None)
        elif state is BundleState.SUCCEEDED:
            if settle(future, value=value):
                self._stats.task_finished(Outcome.SUCCEEDED, duration)
            else:
                self._stats.task_finished(Outcome.CANCELLED, None)
        else:
            if exc is None:  # a bug: a failed bundle always has its error
                raise RuntimeError(f"bundle {bundle.id} failed without an exception")
            if settle(future, exc=exc):
                self._stats.task_finished(Outcome.FAILED, duration)
            else:
                self._stats.task_finished(Outcome.CANCELLED, None)
        # drop payloads early: the bundle may be referenced by the attempt log's users
        bundle.args_payload = b""
        if bundle.local_call is not None:
            bundle.local_call.close()  # attempts still queued hold their own descriptors
            bundle.local_call = None

    def _fail_pending(self, now: float, error: HostUnavailableError) -> None:
        pending = [b for b in self._pending if b.state is BundleState.PENDING]
        self._pending.clear()
        self._n_pending = 0
        for bundle in pending:
            self._finish(bundle, BundleState.FAILED, now, exc=copy_error(error))
