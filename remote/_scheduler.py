"""The REMOTE scheduler: one thread that owns every bundle and every host.

Concurrency design
------------------
One *scheduler thread* owns all mutable state: the bundles, their attempts,
the pending queue, the hosts (connection state, running attempts, free slots,
latency samples) and the selection policy. Nothing else reads or writes that
state, so it needs no locks. Every other thread talks to the scheduler by
posting a message on its queue (a :class:`queue.SimpleQueue`):

- caller threads post ``submit`` (a new bundle), ``cancel`` (from the
  future's done-callback when the user cancelled it) and ``call`` (run a
  function on the scheduler thread and hand back its result: used for
  ``stats()``, ``cancel_queued()`` and by the tests);
- each link's reader thread posts ``result``, ``lost`` and ``down`` through a
  per-connection :class:`_HostEvents` adapter that is tagged with the host and a
  connection generation, so events of a link that was replaced are ignored;
- short-lived *connect threads* run the blocking ``HostLink.connect`` and post
  ``connected`` with the outcome;
- timers (heartbeat, reconnect backoff, the no-host deadline) are handled
  by the loop itself: it waits on the queue with a timeout up to the next
  deadline.

After draining a batch of messages the loop runs the timers and then
``_dispatch``, which starts attempts of pending bundles on free slots. The
caller's future is completed from the scheduler thread exactly once: the first
attempt to finish wins and every other running attempt of the bundle is
cancelled on its host.

Futures are never marked running: they stay PENDING (in concurrent.futures
terms) until the result arrives, so ``Future.cancel()`` always works on an
unfinished bundle. A done-callback notices the cancellation and posts
``cancel``; the scheduler then kills every attempt of the bundle on its host.
Completion calls ``set_running_or_notify_cancel()`` first, so a result racing a
cancellation is dropped cleanly. Done-callbacks of futures therefore run on the
scheduler thread: they must be quick and must not block on other futures of
the same executor.
"""

from __future__ import annotations

import atexit
import heapq
import logging
import pickle
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any, TypeVar

from parallelize._errors import (
    AttemptRecord,
    ParallelizeError,
    PoisonedCallError,
    TaskLostError,
    attach_remote_traceback,
)
from parallelize._executor_base import waits_at_exit
from parallelize._stats import Outcome, TaskStats

from ._bundle import Attempt, AttemptState, Bundle, BundleState
from ._errors import HostErrorKind, HostUnavailableError
from ._heartbeat import (
    BackupCandidate,
    HostStatus,
    PoolStatus,
    format_status,
    percentile,
    pick_backup,
)
from ._link import HostLink, HostSpec
from ._policies import SelectionPolicy

__all__ = ["LinkFactory", "Scheduler"]

logger = logging.getLogger("remote")

LinkFactory = Callable[[HostSpec], HostLink]
T = TypeVar("T")

_BACKOFF_START = 1.0
_BACKOFF_CAP = 60.0
_MAX_BATCH = 512  # messages handled before dispatching again
_MAX_ATTEMPT_RECORDS = 200_000
_HOST_SAMPLES = 1000
_GLOBAL_SAMPLES = 5000
_RATE_WINDOW = 30.0  # seconds of completions used for the ETA


class _HostEvents:
    """LinkEvents for one connection of one host: posts everything to the scheduler."""

    __slots__ = ("_gen", "_host", "_post")

    def __init__(self, post: Callable[[tuple[Any, ...]], None], host: _Host, gen: int) -> None:
        self._post = post
        self._host = host
        self._gen = gen

    def on_result(
        self, link: HostLink, attempt_id: int, ok: bool, payload: bytes, duration: float
    ) -> None:
        self._post(("result", self._host, self._gen, attempt_id, ok, payload, duration))

    def on_attempt_lost(self, link: HostLink, attempt_id: int, reason: str) -> None:
        self._post(("lost", self._host, self._gen, attempt_id, reason))

    def on_link_down(self, link: HostLink, reason: str) -> None:
        self._post(("down", self._host, self._gen, reason))


class _Host:
    """Scheduler-side state of one host (owned by the scheduler thread)."""

    def __init__(self, spec: HostSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.name = spec.name
        self.weight = spec.weight
        self.slots = max(1, spec.slots)
        self.state = "idle"  # idle (never connected) | connecting | up | down | closed
        self.link: HostLink | None = None
        self.gen = 0
        self.reason = ""
        self.running: dict[int, Attempt] = {}
        self._free_ids = list(range(self.slots))
        self.backoff = 0.0
        self.retry_at = 0.0
        self.durations: deque[float] = deque(maxlen=_HOST_SAMPLES)
        self.done = 0
        self.lost = 0

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.running) if self.state == "up" else 0

    def take_slot(self) -> int:
        return heapq.heappop(self._free_ids)

    def release_slot(self, slot: int) -> None:
        heapq.heappush(self._free_ids, slot)

    def __repr__(self) -> str:
        return f"<host {self.name}: {self.state}, {len(self.running)}/{self.slots}>"


_live_schedulers: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def _finish_all_at_exit() -> None:
    """Like concurrent.futures: let submitted calls finish, then close every link (agents
    exit). Unreachable pools cannot hang this: pending calls fail after host_down_timeout.
    A Ctrl-C while waiting, or one during an earlier wait, fails what is left at once."""
    schedulers = list(_live_schedulers)
    for sched in schedulers:
        if waits_at_exit():
            sched.stop()
        else:
            sched.abort("interrupted (Ctrl-C) before the interpreter exited")
    try:
        for sched in schedulers:
            sched.join()
    except KeyboardInterrupt:
        for sched in schedulers:
            sched.abort("interrupted while the interpreter was exiting")
        for sched in schedulers:
            sched.join(timeout=5.0)


class Scheduler:
    """Runs bundles on a pool of hosts; see the module docstring for the threading model."""

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
        max_attempts: int = 3,
        host_down_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not specs:
            raise ValueError("the pool has no hosts")
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"host names in the pool must be unique: {names}")
        self.name = name
        self._clock = clock
        self._link_factory = link_factory
        self._policy = policy
        self._stats = stats
        self._heartbeat_interval = heartbeat_interval
        self._backups = backups
        self._max_backups = max(0, max_backups_per_bundle)
        self._max_attempts = max_attempts
        self._host_down_timeout = host_down_timeout

        self._q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        # --- state below is owned by the scheduler thread -----------------
        self._hosts = [_Host(spec, i) for i, spec in enumerate(specs)]
        self._pending: deque[Bundle] = deque()
        self._n_pending = 0
        self._running: dict[int, Bundle] = {}  # bundle id -> RUNNING bundle
        self._attempts: dict[int, tuple[Attempt, Bundle, _Host]] = {}
        self._next_attempt_id = 1
        self._fn_ids: dict[bytes, int] = {}
        self._next_fn_id = 1
        self._counts = {state: 0 for state in BundleState if state.terminal}
        self._backups_started = 0
        self._backups_won = 0
        self._durations: deque[float] = deque(maxlen=_GLOBAL_SAMPLES)
        self._completions: deque[float] = deque()
        self._attempt_log: deque[dict[str, Any]] = deque(maxlen=_MAX_ATTEMPT_RECORDS)
        self._no_host_since: float | None = None
        self._t0 = self._clock()
        self._next_heartbeat = self._t0 + heartbeat_interval
        self._last_logged: tuple[int, int, int] | None = None
        self._stopping = False
        self._aborting: str | None = None
        # --- shared with connect threads -----------------------------------
        self._closed = False
        self._closed_lock = threading.Lock()

        self._thread = threading.Thread(target=self._run, name=f"{name}-scheduler", daemon=True)
        _live_schedulers.add(self)
        self._thread.start()

    # ------------------------------------------------------------------
    # Thread-safe API (called from any thread)
    # ------------------------------------------------------------------

    def submit(self, bundle: Bundle) -> None:
        with self._closed_lock:
            if not self._closed:
                self._q.put(("submit", bundle))
                return
        if bundle.future.set_running_or_notify_cancel():
            bundle.future.set_exception(
                TaskLostError(f"{bundle.fn_name}: the remote scheduler {self.name!r} has stopped")
            )
            self._stats.task_finished(Outcome.FAILED, None)
        else:
            self._stats.task_finished(Outcome.CANCELLED, None)

    def cancel(self, bundle: Bundle) -> None:
        """The bundle's future was cancelled: drop it, or kill its attempts."""
        self._q.put(("cancel", bundle))

    def heartbeat_now(self) -> None:
        """Run a heartbeat (status log + backup choice) as soon as possible."""
        self._q.put(("heartbeat",))

    def call(self, fn: Callable[[], T], timeout: float | None = 30.0) -> T:
        """Run *fn* on the scheduler thread (or here if it has exited) and return its result."""
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            return fn()
        reply: Future[T] = Future()
        self._q.put(("call", fn, reply))
        try:
            return reply.result(timeout)
        except FuturesTimeoutError:
            if not self._thread.is_alive():
                return fn()
            raise

    def stop(self) -> None:
        """Finish the bundles already submitted, then close every link and exit."""
        self._q.put(("stop",))

    def abort(self, reason: str) -> None:
        """Fail every unfinished bundle now, close every link and exit."""
        self._q.put(("abort", reason))

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug: fail everything rather than hang callers
            logger.exception("remote scheduler %r crashed", self.name)
            self._teardown(f"the scheduler crashed: {type(exc).__name__}: {exc}")
        finally:
            _live_schedulers.discard(self)

    def _loop(self) -> None:
        q = self._q
        while True:
            timeout = self._next_wakeup() - self._clock()
            try:
                msg: tuple[Any, ...] | None = (
                    q.get(timeout=timeout) if timeout > 0 else (q.get_nowait())
                )
            except queue.Empty:
                msg = None
            handled = 0
            while msg is not None:
                self._handle(msg)
                handled += 1
                if handled >= _MAX_BATCH:
                    break
                try:
                    msg = q.get_nowait()
                except queue.Empty:
                    msg = None
            if self._aborting is not None:
                self._teardown(self._aborting)
                return
            now = self._clock()
            self._timers(now)
            self._dispatch(now)
            if self._stopping and not self._n_pending and not self._running:
                self._teardown("the executor was shut down")
                return

    def _next_wakeup(self) -> float:
        wake = self._next_heartbeat
        if self._has_work() or not self._stopping:
            for host in self._hosts:
                if host.state == "down":
                    wake = min(wake, host.retry_at)
        if self._no_host_since is not None and self._n_pending:
            wake = min(wake, self._no_host_since + self._host_down_timeout)
        return wake

    def _has_work(self) -> bool:
        return bool(self._n_pending or self._running)

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "result":
            _, host, gen, attempt_id, ok, payload, duration = msg
            self._on_result(host, attempt_id, ok, payload, duration)
        elif kind == "submit":
            self._on_submit(msg[1])
        elif kind == "lost":
            _, host, gen, attempt_id, reason = msg
            self._on_lost(host, attempt_id, reason)
        elif kind == "down":
            _, host, gen, reason = msg
            if gen == host.gen and host.state in ("up", "connecting"):
                self._host_down(host, reason, self._clock())
        elif kind == "connected":
            _, host, gen, link, error = msg
            self._on_connected(host, gen, link, error)
        elif kind == "cancel":
            self._on_cancel(msg[1])
        elif kind == "call":
            _, fn, reply = msg
            try:
                reply.set_result(fn())
            except BaseException as exc:
                reply.set_exception(exc)
        elif kind == "heartbeat":
            self._heartbeat(self._clock())
        elif kind == "stop":
            self._stopping = True
        elif kind == "abort":
            self._aborting = msg[1]
        else:  # pragma: no cover - a bug
            raise AssertionError(f"unknown scheduler message {kind!r}")

    # ------------------------------------------------------------------
    # Bundles
    # ------------------------------------------------------------------

    def _on_submit(self, bundle: Bundle) -> None:
        if bundle.future.cancelled():  # cancelled before we even saw it
            self._finish(bundle, BundleState.CANCELLED, self._clock())
            return
        fn_id = self._fn_ids.get(bundle.fn_payload)
        if fn_id is None:
            if len(self._fn_ids) >= 10_000:  # many distinct lambdas: forget old ids
                self._fn_ids.clear()
            fn_id = self._fn_ids[bundle.fn_payload] = self._next_fn_id
            self._next_fn_id += 1
        bundle.fn_id = fn_id
        self._pending.append(bundle)
        self._n_pending += 1
        for host in self._hosts:
            if host.state == "idle":
                self._connect(host)

    def _dispatch(self, now: float) -> None:
        """Start pending bundles on free slots, in order.

        A retry whose only candidates are hosts that already ran it is deferred while
        some other host that has not run it is up (busy) and other pending bundles can
        use the free slot; a second pass gives deferred retries the slots still free.
        """
        if not self._pending:
            return
        deferred: list[Bundle] = []
        self._dispatch_pass(now, deferred)
        if deferred:
            self._pending.extendleft(reversed(deferred))
            self._dispatch_pass(now, None)

    def _dispatch_pass(self, now: float, deferred: list[Bundle] | None) -> None:
        pending = self._pending
        while pending:
            bundle = pending[0]
            if bundle.state is not BundleState.PENDING:
                pending.popleft()  # cancelled or failed while queued
                continue
            candidates = [h for h in self._hosts if h.free_slots > 0]
            if not candidates:
                return
            tried = bundle.tried_hosts if bundle.attempts else frozenset()
            if (
                tried
                and deferred is not None
                and all(h.name in tried for h in candidates)
                and any(h.state == "up" and h.name not in tried for h in self._hosts)
            ):
                deferred.append(pending.popleft())
                continue
            host = self._policy.select(candidates, tried)
            if host is None:
                return
            pending.popleft()
            self._n_pending -= 1
            self._start_attempt(bundle, host, now, is_backup=False)

    def _start_attempt(self, bundle: Bundle, host: _Host, now: float, *, is_backup: bool) -> None:
        attempt_id = self._next_attempt_id
        self._next_attempt_id += 1
        attempt = bundle.start_attempt(
            attempt_id, host.name, host.take_slot(), now, is_backup=is_backup
        )
        self._running[bundle.id] = bundle
        host.running[attempt_id] = attempt
        self._attempts[attempt_id] = (attempt, bundle, host)
        if is_backup:
            self._backups_started += 1
            logger.info(
                "%s: backup of bundle %d (%s) on %s, running for %.3gs",
                self.name,
                bundle.id,
                bundle.fn_name,
                host.name,
                now - min(a.start for a in bundle.running_attempts),
            )
        link = host.link
        assert link is not None and bundle.fn_id is not None
        try:
            link.submit(attempt_id, bundle.fn_id, bundle.fn_payload, bundle.args_payload)
        except Exception as exc:
            self._host_down(host, f"could not send an attempt: {type(exc).__name__}: {exc}", now)

    def _end_attempt(
        self, attempt: Attempt, host: _Host, state: AttemptState, now: float, reason: str = ""
    ) -> None:
        attempt.finish(state, now, reason)
        del self._attempts[attempt.id]
        del host.running[attempt.id]
        host.release_slot(attempt.slot)
        self._attempt_log.append(
            {
                "bundle": attempt.bundle_id,
                "attempt": attempt.id,
                "host": attempt.host,
                "slot": attempt.slot,
                "start": attempt.start - self._t0,
                "end": now - self._t0,
                "outcome": state.value,
                "is_backup": attempt.is_backup,
                "reason": reason,
            }
        )

    def _cancel_attempts(self, bundle: Bundle, now: float, reason: str) -> None:
        for attempt in bundle.running_attempts:
            _, _, host = self._attempts[attempt.id]
            self._end_attempt(attempt, host, AttemptState.CANCELLED, now, reason)
            if host.link is not None and host.state == "up":
                try:
                    host.link.cancel(attempt.id)
                except Exception as exc:
                    logger.debug(
                        "cancel of attempt %d on %s failed: %s", attempt.id, host.name, exc
                    )

    def _on_result(
        self, host: _Host, attempt_id: int, ok: bool, payload: bytes, duration: float
    ) -> None:
        entry = self._attempts.get(attempt_id)
        if entry is None:
            return  # a loser or a cancelled attempt that finished anyway
        attempt, bundle, _ = entry
        now = self._clock()
        won = bundle.future.set_running_or_notify_cancel()
        self._end_attempt(
            attempt,
            host,
            AttemptState.WON if won else AttemptState.CANCELLED,
            now,
            "" if won else "cancelled by the user",
        )
        elapsed = now - attempt.start
        host.durations.append(elapsed)
        host.done += 1
        self._durations.append(elapsed)
        if attempt.is_backup and won:
            self._backups_won += 1
        self._cancel_attempts(bundle, now, f"lost the race to attempt {attempt_id}")
        if not won:
            self._finish(bundle, BundleState.CANCELLED, now)
            return
        try:
            value = pickle.loads(payload)
        except BaseException as exc:
            error: BaseException = ParallelizeError(
                f"{bundle.fn_name}: the {'result' if ok else 'exception'} sent back by host "
                f"{host.name} could not be unpickled here ({type(exc).__name__}: {exc})"
            )
            error.__cause__ = exc
            self._finish(bundle, BundleState.FAILED, now, exc=error, duration=duration)
            return
        if ok:
            self._finish(bundle, BundleState.SUCCEEDED, now, value=value, duration=duration)
            return
        try:
            exc_value, tb_text = value
            if not isinstance(exc_value, BaseException):
                raise TypeError(f"not an exception: {exc_value!r}")
            attach_remote_traceback(exc_value, str(tb_text))
        except (TypeError, ValueError) as bad:
            exc_value = ParallelizeError(
                f"{bundle.fn_name} failed on host {host.name} with an unreadable error: {bad}"
            )
        self._finish(bundle, BundleState.FAILED, now, exc=exc_value, duration=duration)

    def _on_lost(self, host: _Host, attempt_id: int, reason: str) -> None:
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

    def cancel_pending(self) -> int:
        """Cancel every bundle that has not started (run on the scheduler thread)."""
        count = 0
        now = self._clock()
        for bundle in self._pending:
            if bundle.state is BundleState.PENDING and bundle.future.cancel():
                self._n_pending -= 1
                self._finish(bundle, BundleState.CANCELLED, now)
                count += 1
        self._pending.clear()
        return count

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
        self._completions.append(now)
        future = bundle.future
        if state is BundleState.CANCELLED:
            future.cancel()
            self._stats.task_finished(Outcome.CANCELLED, None)
        elif state is BundleState.SUCCEEDED:
            future.set_result(value)
            self._stats.task_finished(Outcome.SUCCEEDED, duration)
        else:
            assert exc is not None
            if future.running() or future.set_running_or_notify_cancel():
                future.set_exception(exc)
                self._stats.task_finished(Outcome.FAILED, duration)
            else:
                self._stats.task_finished(Outcome.CANCELLED, None)
        # drop payloads early: the bundle may be referenced by the attempt log's users
        bundle.args_payload = b""

    # ------------------------------------------------------------------
    # Hosts
    # ------------------------------------------------------------------

    def _connect(self, host: _Host) -> None:
        host.gen += 1
        host.state = "connecting"
        gen = host.gen
        try:
            link = self._link_factory(host.spec)
        except Exception as exc:
            self._host_down(host, f"{type(exc).__name__}: {exc}", self._clock())
            return
        host.link = link
        events = _HostEvents(self._q.put, host, gen)
        threading.Thread(
            target=self._connect_worker,
            args=(host, gen, link, events),
            name=f"{self.name}-connect-{host.name}",
            daemon=True,
        ).start()

    def _connect_worker(self, host: _Host, gen: int, link: HostLink, events: _HostEvents) -> None:
        error: str | None = None
        try:
            link.connect(events)
        except BaseException as exc:
            error = str(exc) or type(exc).__name__
        with self._closed_lock:
            if not self._closed:
                self._q.put(("connected", host, gen, link, error))
                return
        _close_quietly(link)

    def _on_connected(self, host: _Host, gen: int, link: HostLink, error: str | None) -> None:
        now = self._clock()
        if gen != host.gen or host.state != "connecting":
            _close_quietly(link)
            return
        if error is not None:
            self._host_down(host, error, now)
            return
        host.state = "up"
        host.reason = ""
        host.backoff = 0.0
        self._no_host_since = None
        logger.info("%s: host %s is up (%d slots)", self.name, host.name, host.slots)

    def _host_down(self, host: _Host, reason: str, now: float) -> None:
        was = host.state
        host.state = "down"
        host.reason = reason
        host.gen += 1  # ignore anything the old link still says
        link, host.link = host.link, None
        if link is not None:
            _close_quietly(link)
        host.backoff = min(max(_BACKOFF_START, host.backoff * 2), _BACKOFF_CAP)
        host.retry_at = now + host.backoff
        logger.warning(
            "%s: host %s is down (%s); retrying in %.3gs",
            self.name,
            host.name,
            reason,
            host.backoff,
        )
        affected = []
        for attempt in list(host.running.values()):
            _, bundle, _ = self._attempts[attempt.id]
            self._end_attempt(
                attempt,
                host,
                AttemptState.LOST,
                now,
                f"host {host.name} went down ({reason})" if was == "up" else reason,
            )
            host.lost += 1
            affected.append(bundle)
        for bundle in affected:
            self._attempt_failed(bundle, now)
        if not any(h.state == "up" for h in self._hosts) and self._no_host_since is None:
            self._no_host_since = now

    def _timers(self, now: float) -> None:
        # a host that went down is retried with backoff even when idle (it was used, it
        # should be ready for the next call); a never-used host connects at first use
        work = self._has_work()
        for host in self._hosts:
            if (host.state == "down" and host.retry_at <= now and (work or not self._stopping)) or (
                host.state == "idle" and work
            ):
                self._connect(host)
        if work:
            if any(h.state == "up" for h in self._hosts):
                self._no_host_since = None
            elif self._no_host_since is None:
                self._no_host_since = now
            elif self._n_pending and now - self._no_host_since >= self._host_down_timeout:
                self._fail_unreachable(now)
        else:
            self._no_host_since = None
        if now >= self._next_heartbeat:
            self._heartbeat(now)

    def _fail_unreachable(self, now: float) -> None:
        assert self._no_host_since is not None
        reasons = "; ".join(_describe(h) for h in self._hosts)
        message = f"no host of the pool reachable for {now - self._no_host_since:.0f} s: {reasons}"
        logger.error("%s: %s", self.name, message)
        pending = [b for b in self._pending if b.state is BundleState.PENDING]
        self._pending.clear()
        self._n_pending = 0
        for bundle in pending:
            self._finish(
                bundle,
                BundleState.FAILED,
                now,
                exc=HostUnavailableError(message, HostErrorKind.UNREACHABLE),
            )
        self._no_host_since = now

    # ------------------------------------------------------------------
    # Heartbeat: status and backups
    # ------------------------------------------------------------------

    def _heartbeat(self, now: float) -> None:
        self._next_heartbeat = now + self._heartbeat_interval
        status = self.status(now)
        key = (status.done, status.in_flight, status.pending)
        if self._has_work() or key != self._last_logged:
            self._last_logged = key
            if logger.isEnabledFor(logging.INFO):
                logger.info("%s", format_status(self.name, status))
        self._maybe_backup(now, status)

    def _maybe_backup(self, now: float, status: PoolStatus) -> None:
        if not self._backups or self._max_backups == 0 or self._n_pending:
            return
        if status.done < 2 or not self._running:
            return
        free = [h for h in self._hosts if h.free_slots > 0]
        if not free:
            return
        p95_by_host = {h.name: h.p95 for h in status.hosts}
        candidates = []
        for bundle in self._running.values():
            running = bundle.running_attempts
            if not running or bundle.backups >= self._max_backups:
                continue
            busy = {a.host for a in running}
            if not any(h.name not in busy for h in free):
                continue
            oldest = min(running, key=lambda a: a.start)
            candidates.append(
                BackupCandidate(
                    bundle.id, now - oldest.start, p95_by_host.get(oldest.host), bundle.backups
                )
            )
        best = pick_backup(candidates, status.p50, status.p95)
        if best is None:
            return
        bundle = self._running[best.bundle_id]
        busy = {a.host for a in bundle.running_attempts}
        host = self._policy.select([h for h in free if h.name not in busy], bundle.tried_hosts)
        if host is not None:
            self._start_attempt(bundle, host, now, is_backup=True)

    def status(self, now: float | None = None) -> PoolStatus:
        """The heartbeat data (scheduler thread only; others use ``call``)."""
        if now is None:
            now = self._clock()
        hosts = []
        for h in self._hosts:
            durations = list(h.durations)
            hosts.append(
                HostStatus(
                    name=h.name,
                    state=h.state,
                    slots=h.slots,
                    in_flight=len(h.running),
                    done=h.done,
                    lost=h.lost,
                    p50=percentile(durations, 50),
                    p95=percentile(durations, 95),
                    reason=h.reason,
                    in_flight_bundles=tuple(sorted({a.bundle_id for a in h.running.values()})),
                )
            )
        completions = self._completions
        while completions and completions[0] < now - _RATE_WINDOW:
            completions.popleft()
        remaining = self._n_pending + len(self._running)
        eta: float | None = None
        if remaining == 0:
            eta = 0.0
        elif len(completions) >= 2 and completions[-1] > completions[0]:
            rate = len(completions) / max(now - completions[0], 1e-9)
            eta = remaining / rate
        durations = list(self._durations)
        counts = self._counts
        return PoolStatus(
            done=sum(counts.values()),
            in_flight=len(self._running),
            pending=self._n_pending,
            succeeded=counts[BundleState.SUCCEEDED],
            failed=counts[BundleState.FAILED],
            poisoned=counts[BundleState.POISONED],
            cancelled=counts[BundleState.CANCELLED],
            backups_started=self._backups_started,
            backups_won=self._backups_won,
            p50=percentile(durations, 50),
            p95=percentile(durations, 95),
            eta=eta,
            hosts=tuple(hosts),
        )

    def snapshot(self) -> dict[str, Any]:
        """Status as plain data plus the attempt records (scheduler thread only)."""
        data = self.status().as_dict()
        data["attempts"] = list(self._attempt_log)
        return data

    # ------------------------------------------------------------------
    # Teardown
    # ------------------------------------------------------------------

    def _teardown(self, reason: str) -> None:
        """Fail whatever is unfinished, close every link, stop accepting connections."""
        with self._closed_lock:
            self._closed = True
        now = self._clock()
        for bundle in list(self._running.values()):
            self._cancel_attempts(bundle, now, reason)
            if not bundle.state.terminal:
                self._finish(
                    bundle,
                    BundleState.FAILED,
                    now,
                    exc=TaskLostError(f"{bundle.fn_name}: {reason}"),
                )
        for bundle in list(self._pending):
            if bundle.state is BundleState.PENDING:
                self._finish(
                    bundle,
                    BundleState.FAILED,
                    now,
                    exc=TaskLostError(f"{bundle.fn_name}: {reason}"),
                )
        self._pending.clear()
        self._n_pending = 0
        for host in self._hosts:
            link, host.link = host.link, None
            host.gen += 1
            host.state = "closed"
            if link is not None:
                _close_quietly(link)
        # late messages: close links that finished connecting, fail late submits
        while True:
            try:
                msg = self._q.get_nowait()
            except queue.Empty:
                break
            if msg[0] == "connected":
                _close_quietly(msg[3])
            elif msg[0] == "submit" and not msg[1].state.terminal:
                self._finish(
                    msg[1],
                    BundleState.FAILED,
                    now,
                    exc=TaskLostError(f"{msg[1].fn_name}: {reason}"),
                )
            elif msg[0] == "call":
                try:
                    msg[2].set_result(msg[1]())
                except BaseException as exc:
                    msg[2].set_exception(exc)


def _describe(host: _Host) -> str:
    """``host NAME: reason`` (without repeating the name when the reason starts with it)."""
    reason = host.reason or host.state
    if reason.startswith((f"host {host.name}", f"host {host.name!r}")):
        return reason
    return f"host {host.name}: {reason}"


def _close_quietly(link: HostLink) -> None:
    try:
        link.close()
    except Exception as exc:
        logger.debug("closing link to %s failed: %s", link.spec.name, exc)
