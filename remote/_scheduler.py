"""The REMOTE scheduler: one thread that owns every bundle and every host.

This module is long (about 800 lines) because it is the one place that owns the
pool's state; what can be pure lives elsewhere: host state machine and speed
estimates (``_hosts``), speculation and slow-host policy (``_speculation``),
selection (``_policies``), status and percentiles (``_heartbeat``), the bounded
attempt record (``_attempt_log``), bundle/attempt state machines (``_bundle``).

Concurrency design
------------------
One *scheduler thread* owns all mutable state: the bundles, their attempts,
the pending queue, the hosts (connection state, running attempts, free slots,
speed estimates) and the selection policy. Nothing else reads or writes that
state, so it needs no locks. Every other thread talks to the scheduler by
posting a message on its queue (a :class:`queue.SimpleQueue`):

- caller threads post ``submit`` (a new bundle), ``cancel`` (from the
  future's done-callback when the user cancelled it) and ``call`` (run a
  function on the scheduler thread and hand back its result: used for
  ``stats()``, ``cancel_queued()`` and by the tests);
- each link's threads post ``result``, ``lost``, ``down`` and ``health``
  through a per-connection :class:`_HostEvents` adapter that is tagged with the
  host and a connection generation, so events of a replaced link are ignored;
- short-lived *connect threads* run the blocking ``HostLink.connect`` and post
  ``connected`` with the outcome;
- timers (heartbeat, reconnect backoff, the no-host deadline, speculation
  re-checks) are handled by the loop itself: it waits on the queue with a
  timeout up to the next deadline.

The scheduler thread never blocks on I/O: links queue frames for their own
writer threads, and ``close()`` returns at once (see ``_agent_client``).

After draining a batch of messages the loop runs the timers, then
``_dispatch`` (backups for calls stuck on SUSPECT hosts first, then pending
bundles on free slots of UP hosts, keeping calls off much slower hosts), then
``_speculate`` (backups of stragglers on idle slots; see ``_speculation``).
The caller's future is completed from the scheduler thread exactly once: the
first attempt to finish wins and every other running attempt of the bundle is
cancelled on its host.

Failures: a lost attempt (its process died, its host went down) is retried
elsewhere up to ``max_attempts`` before the bundle is poisoned
(:class:`~parallelize.PoisonedCallError`). A host whose connection fails for a
transient reason is retried with backoff; a permanent one (host key, refused
key, wrong Python: see :class:`~remote.HostErrorKind`) makes it BROKEN, is
warned about once where a user sees it, and is retried only on a long backoff;
when every host is BROKEN, pending calls fail at once with that error. When no
host is UP for ``host_down_timeout`` seconds, pending calls fail.

Futures are never marked running: they stay PENDING (in concurrent.futures
terms) until the result arrives, so ``Future.cancel()`` always works on an
unfinished bundle. A done-callback notices the cancellation and posts
``cancel``; the scheduler then kills every attempt of the bundle on its host.
Completion calls ``set_running_or_notify_cancel()`` first, so a result racing a
cancellation is dropped cleanly. Done-callbacks of futures therefore run on the
scheduler thread: they must be quick and must not block on other futures of
the same executor.

At interpreter exit the scheduler finishes what was submitted over connections
that are still open (its exit hook runs before ordinary ``atexit`` handlers,
paramiko's among them, which would close every connection first and make the
calls in flight run twice), then closes its links.
"""

from __future__ import annotations

import atexit
import logging
import pickle
import queue
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any, TypeVar, cast

from parallelize._errors import (
    AttemptRecord,
    ParallelizeError,
    PoisonedCallError,
    TaskLostError,
    attach_remote_traceback,
)
from parallelize._executor_base import waits_at_exit
from parallelize._stats import Outcome, TaskStats

from ._attempt_log import AttemptLog
from ._bundle import Attempt, AttemptState, Bundle, BundleState
from ._errors import HostErrorKind, HostUnavailableError
from ._heartbeat import HostStatus, PoolStatus, format_status, percentile
from ._host_table import HostTable
from ._hosts import Host, HostState
from ._link import HostLink, HostSpec
from ._policies import SelectionPolicy
from ._speculation import (
    SpeculationConfig,
    feeds_slow_host,
    remaining_time,
    worth_backup,
)

__all__ = ["LinkFactory", "Scheduler"]

logger = logging.getLogger("remote")

LinkFactory = Callable[[HostSpec], HostLink]
T = TypeVar("T")

_BACKOFF_START = 1.0
_BACKOFF_CAP = 60.0
_BROKEN_BACKOFF_START = 30.0  # a permanent error needs a person: retry rarely
_BROKEN_BACKOFF_CAP = 600.0
_MAX_BATCH = 512  # messages handled before dispatching again
_GLOBAL_SAMPLES = 5000
_RATE_WINDOW = 30.0  # seconds of completions used for the ETA
_FN_IDS = 1024  # distinct function payloads remembered (LRU) for their ids
_CLOSE_WAIT = 3.0  # seconds teardown waits, in all, for links to finish closing
_SCAN = 0.02  # seconds between two speculation scans at most


def warn_visibly(log: logging.Logger, message: str, *args: Any) -> None:
    """Log at WARNING; when no handler is configured anywhere (our loggers carry only a
    NullHandler, which stops ``logging.lastResort``), print it through lastResort, so a
    problem that needs a person is never silent in a plain script."""
    log.warning(message, *args)
    current: logging.Logger | None = log
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return
        if not current.propagate:
            break
        current = current.parent
    last = logging.lastResort
    if last is not None and log.isEnabledFor(logging.WARNING):
        record = log.makeRecord(log.name, logging.WARNING, "(remote)", 0, message, args, None)
        last.handle(record)


class _HostEvents:
    """LinkEvents for one connection of one host: posts everything to the scheduler."""

    __slots__ = ("_gen", "_host", "_post")

    def __init__(self, post: Callable[[tuple[Any, ...]], None], host: Host, gen: int) -> None:
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

    def on_link_health(self, link: HostLink, suspect: bool, silent: float) -> None:
        self._post(("health", self._host, self._gen, suspect, silent))


_live_schedulers: weakref.WeakSet[Scheduler] = weakref.WeakSet()


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


def _register_exit_hook() -> None:
    # threading's exit hooks run before atexit's (concurrent.futures relies on the same):
    # paramiko's atexit handler closes every SSH connection, and if it ran first the
    # calls in flight would be lost and run again.
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(_finish_all_at_exit)
            return
        except RuntimeError:  # interpreter already shutting down
            pass
    atexit.register(_finish_all_at_exit)


_register_exit_hook()


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
        backup_budget: float = 0.1,
        max_attempts: int = 3,
        host_down_timeout: float = 60.0,
        timeline_limit: int = 10_000,
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
        self._next_attempt_id = 1
        self._fn_ids: OrderedDict[bytes, int] = OrderedDict()
        self._next_fn_id = 1
        self._submitted = 0
        self._counts = {state: 0 for state in BundleState if state.terminal}
        self._backups_started = 0
        self._speculative_started = 0
        self._backups_won = 0
        self._durations: deque[float] = deque(maxlen=_GLOBAL_SAMPLES)
        self._completions: deque[float] = deque()
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

        self._thread = threading.Thread(target=self._run, name=f"{name}-scheduler", daemon=True)
        _live_schedulers.add(self)
        self._thread.start()

    # ------------------------------------------------------------------
    # Thread-safe API (called from any thread)
    # ------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the scheduler stopped taking work (torn down)."""
        return self._closed

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
            self._speculate(now)
            if self._stopping and not self._n_pending and not self._running:
                self._teardown("the executor was shut down")
                return

    def _next_wakeup(self) -> float:
        wake = self._next_heartbeat
        if self._has_work() or not self._stopping:
            retry = self._table.next_retry()
            if retry is not None:
                wake = min(wake, retry)
        if self._no_host_since is not None and self._n_pending:
            wake = min(wake, self._no_host_since + self._host_down_timeout)
        if self._next_speculation is not None:
            wake = min(wake, self._next_speculation)
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
            if gen == host.gen and host.state.connected:
                self._host_down(host, reason, self._clock())
        elif kind == "health":
            _, host, gen, suspect, silent = msg
            if gen == host.gen:
                self._on_health(host, suspect, silent, self._clock())
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
        else:  # a bug
            raise RuntimeError(f"unknown scheduler message {kind!r}")

    # ------------------------------------------------------------------
    # Bundles
    # ------------------------------------------------------------------

    def _on_submit(self, bundle: Bundle) -> None:
        self._submitted += 1
        if bundle.future.cancelled():  # cancelled before we even saw it
            self._finish(bundle, BundleState.CANCELLED, self._clock())
            return
        fn_id = self._fn_ids.get(bundle.fn_payload)
        if fn_id is None:
            if len(self._fn_ids) >= _FN_IDS:  # many distinct lambdas: forget the oldest
                self._fn_ids.popitem(last=False)
            fn_id = self._fn_ids[bundle.fn_payload] = self._next_fn_id
            self._next_fn_id += 1
        else:
            self._fn_ids.move_to_end(bundle.fn_payload)
        bundle.fn_id = fn_id
        broken = self._broken_error() if self._table.up_count == 0 else None
        if broken is not None:
            self._finish(bundle, BundleState.FAILED, self._clock(), exc=_copy_error(broken))
            return
        self._pending.append(bundle)
        self._n_pending += 1
        for host in self._table.take_idle():
            self._connect(host)

    def _dispatch(self, now: float) -> None:
        """Back up calls stuck on SUSPECT hosts, then start pending bundles on free slots.

        A retry whose only candidates are hosts that already ran it is deferred while
        some other host that has not run it is up (busy) and other pending bundles can
        use the free slot; a second pass gives deferred retries the slots still free.
        """
        if self._rescue:
            self._serve_rescue(now)
        if not self._pending:
            return
        deferred: list[Bundle] = []
        self._dispatch_pass(now, deferred)
        if deferred:
            self._pending.extendleft(reversed(deferred))
            self._dispatch_pass(now, None)

    def _dispatch_pass(self, now: float, deferred: list[Bundle] | None) -> None:
        pending = self._pending
        candidates = self._feedable_hosts(now)
        while pending and candidates:
            bundle = pending[0]
            if bundle.state is not BundleState.PENDING:
                pending.popleft()  # cancelled or failed while queued
                continue
            tried = bundle.tried_hosts if bundle.attempts else frozenset()
            if (
                tried
                and deferred is not None
                and all(h.name in tried for h in candidates)
                and any(h.state is HostState.UP and h.name not in tried for h in self._hosts)
            ):
                deferred.append(pending.popleft())
                continue
            host = self._policy.select(candidates, tried)
            if host is None:
                return
            pending.popleft()
            self._n_pending -= 1
            self._start_attempt(bundle, host, now, is_backup=False)
            if host.free_slots == 0 and candidates is not self._table.free:
                candidates.remove(host)  # (the table's own list updates itself)

    def _feedable_hosts(self, now: float) -> list[Host]:
        """Hosts with a free slot, less those much slower than the rest while the faster
        ones can drain the queue sooner (see ``_speculation``). A slow host that has had
        nothing to do for a while gets one call, so that its estimate can recover.

        Usually this is the host table's own list of free hosts (no copy)."""
        table = self._table
        free = table.free
        if not free or not self._spec.enabled:
            return free
        factor = self._spec.slow_factor
        table.refresh_speeds(now, factor)
        if not table.spread:
            return free
        keep = []
        for host in free:
            est = host.speed_estimate(now)
            if feeds_slow_host(est, table.fastest, table.fast_rate, self._n_pending, factor):
                keep.append(host)
            elif est is not None and not host.running and now - host.last_start > 2 * est:
                keep.append(host)  # a probe: the host may have recovered
        return keep

    def _serve_rescue(self, now: float) -> None:
        rescue = self._rescue
        while rescue:
            bundle = rescue[0]
            running = bundle.running_attempts
            if (
                bundle.state is not BundleState.RUNNING
                or not running
                or any(self._host_of(a).state is HostState.UP for a in running)
            ):
                rescue.popleft()
                continue
            busy = {a.host for a in running}
            options = [h for h in self._table.free if h.name not in busy]
            if not options:
                return
            host = self._policy.select(options, bundle.tried_hosts)
            if host is None:
                return
            rescue.popleft()
            self._start_attempt(bundle, host, now, is_backup=True)

    def _host_of(self, attempt: Attempt) -> Host:
        return self._attempts[attempt.id][2]

    def _start_attempt(self, bundle: Bundle, host: Host, now: float, *, is_backup: bool) -> None:
        attempt_id = self._next_attempt_id
        self._next_attempt_id += 1
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
            link.submit(attempt_id, bundle.fn_id, bundle.fn_payload, bundle.args_payload)
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
            attempt.slot,
            attempt.start - self._t0,
            now - self._t0,
            state.value,
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
        self, host: Host, attempt_id: int, ok: bool, payload: bytes, duration: float
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
        host.record_duration(elapsed)
        self._durations.append(elapsed)
        if attempt.is_backup and won:
            self._backups_won += 1
        for loser in bundle.running_attempts:  # what they ran is a floor on their host's pace
            self._host_of(loser).record_censored(now - loser.start)
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

    def cancel_pending(self) -> int:
        """Cancel every bundle that has not started (run on the scheduler thread).

        Bundles that a free slot can take right now are started first, as a worker of
        a standard pool would already have picked them up."""
        self._dispatch(self._clock())
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
            if exc is None:  # a bug: a failed bundle always has its error
                raise RuntimeError(f"bundle {bundle.id} failed without an exception")
            if future.running() or future.set_running_or_notify_cancel():
                future.set_exception(exc)
                self._stats.task_finished(Outcome.FAILED, duration)
            else:
                self._stats.task_finished(Outcome.CANCELLED, None)
        # drop payloads early: the bundle may be referenced by the attempt log's users
        bundle.args_payload = b""

    # ------------------------------------------------------------------
    # Speculation: backups of stragglers on idle slots
    # ------------------------------------------------------------------

    def _speculate(self, now: float) -> None:
        """Start backups while slots are idle, nothing is queued and the budget allows.

        Runs after batches of events (an attempt started or ended, a host turned suspect),
        not on the heartbeat, at most every ``_SCAN`` seconds; while stragglers may still
        cross the threshold it schedules a re-check a fraction of a typical attempt later.
        Only attempts that can qualify are looked at: the oldest ones (``_running`` is in
        start order), and those on hosts much slower than the fastest."""
        self._next_speculation = None
        cfg = self._spec
        table = self._table
        if not cfg.enabled or not cfg.max_backups_per_bundle or not self._running:
            return
        if self._n_pending or not table.free:
            return
        allowance = cfg.allowance(self._submitted) - self._speculative_started
        if allowance <= 0:
            return
        if now < self._speculation_scan_at:
            self._next_speculation = self._speculation_scan_at
            return
        self._speculation_scan_at = now + _SCAN
        table.refresh_speeds(now, cfg.slow_factor)
        pool_est = table.median
        if pool_est is None:
            return  # nothing has finished yet: no notion of slow
        free = sorted(table.free, key=lambda h: pool_est if h.estimate is None else h.estimate)
        best_free = pool_est if free[0].estimate is None else free[0].estimate
        youngest_straggler = cfg.straggle_factor * (table.fastest or pool_est)
        candidates: dict[int, tuple[float, Bundle]] = {}

        def consider(bundle: Bundle) -> None:
            running = bundle.running_attempts
            if not running or bundle.backups >= cfg.max_backups_per_bundle:
                return
            left = min(
                remaining_time(
                    now - a.start,
                    (host := self._host_of(a)).estimate,  # finished attempts only
                    pool_est,
                    suspect=host.state is not HostState.UP,
                    straggle_factor=cfg.straggle_factor,
                )
                for a in running
            )
            if worth_backup(left, best_free, cfg.gain):
                candidates[bundle.id] = (left, bundle)

        for bundle in self._running.values():  # oldest first
            if bundle.attempts and now - bundle.attempts[0].start < youngest_straggler:
                break
            consider(bundle)
        if table.spread:
            for host in self._hosts:
                if host.estimate is not None and host.estimate > cfg.gain * best_free:
                    for attempt in list(host.running.values()):
                        consider(self._attempts[attempt.id][1])
        for left, bundle in sorted(candidates.values(), key=lambda item: -item[0]):
            if allowance <= 0 or not free:
                break
            busy = {a.host for a in bundle.running_attempts}
            target = next((h for h in free if h.name not in busy), None)  # fastest first
            if target is None:
                continue
            if not worth_backup(
                left, pool_est if target.estimate is None else target.estimate, cfg.gain
            ):
                continue
            self._start_attempt(bundle, target, now, is_backup=True)
            self._speculative_started += 1
            allowance -= 1
            if target.free_slots == 0:
                free.remove(target)
        if free and allowance > 0 and self._running:
            self._next_speculation = now + max(_SCAN, min(pool_est / 4, 1.0))

    # ------------------------------------------------------------------
    # Hosts
    # ------------------------------------------------------------------

    def _connect(self, host: Host) -> None:
        host.gen += 1
        self._table.move(host, HostState.CONNECTING)
        gen = host.gen
        try:
            link = self._link_factory(host.spec)
        except Exception as exc:
            self._connect_failed(host, exc, self._clock())
            return
        host.link = link
        events = _HostEvents(self._q.put, host, gen)
        threading.Thread(
            target=self._connect_worker,
            args=(host, gen, link, events),
            name=f"{self.name}-connect-{host.name}",
            daemon=True,
        ).start()

    def _connect_worker(self, host: Host, gen: int, link: HostLink, events: _HostEvents) -> None:
        error: BaseException | None = None
        try:
            link.connect(events)
        except BaseException as exc:
            error = exc
        with self._closed_lock:
            if not self._closed:
                self._q.put(("connected", host, gen, link, error))
                return
        _close_quietly(link)

    def _on_connected(
        self, host: Host, gen: int, link: HostLink, error: BaseException | None
    ) -> None:
        now = self._clock()
        if gen != host.gen or host.state is not HostState.CONNECTING:
            _close_quietly(link)
            return
        if error is not None:
            self._connect_failed(host, error, now)
            return
        self._table.move(host, HostState.UP)
        host.reason = ""
        host.error = None
        host.backoff = 0.0
        self._no_host_since = None
        logger.info("%s: host %s is up (%d slots)", self.name, host.name, host.slots)

    def _connect_failed(self, host: Host, error: BaseException, now: float) -> None:
        if isinstance(error, HostUnavailableError):
            failure = error
        else:
            failure = HostUnavailableError(
                f"host {host.name!r}: {type(error).__name__}: {error}",
                HostErrorKind.UNREACHABLE,
                host.name,
            )
        link, host.link = host.link, None
        if link is not None:
            _close_quietly(link)
        host.error = failure
        host.reason = str(failure)
        host.gen += 1
        if failure.permanent:
            host.backoff = min(max(_BROKEN_BACKOFF_START, host.backoff * 2), _BROKEN_BACKOFF_CAP)
            host.retry_at = now + host.backoff
            self._table.move(host, HostState.BROKEN)
            if failure.kind.value not in host.warned:
                host.warned.add(failure.kind.value)
                warn_visibly(
                    logger, "%s: host %s cannot be used: %s", self.name, host.name, failure
                )
        else:
            host.backoff = min(max(_BACKOFF_START, host.backoff * 2), _BACKOFF_CAP)
            host.retry_at = now + host.backoff
            self._table.move(host, HostState.DOWN)
            logger.warning(
                "%s: host %s is down (%s); retrying in %.3gs",
                self.name,
                host.name,
                failure,
                host.backoff,
            )
        self._note_no_host(now)
        broken = self._broken_error()
        if broken is not None:
            self._fail_pending(now, broken)

    def _broken_error(self) -> HostUnavailableError | None:
        """The error to fail calls with when every host has a permanent error, else None."""
        errors = []
        for host in self._hosts:
            error = host.error
            if error is None or not error.permanent:
                return None
            if host.state not in (HostState.BROKEN, HostState.CONNECTING):
                return None
            errors.append(error)
        if len(errors) == 1:
            return errors[0]
        kinds = {e.kind for e in errors}
        message = "no host of the pool can be used: " + "; ".join(str(e) for e in errors)
        return HostUnavailableError(
            message, errors[0].kind if len(kinds) == 1 else HostErrorKind.CONFIG, ""
        )

    def _on_health(self, host: Host, suspect: bool, silent: float, now: float) -> None:
        if suspect and host.state is HostState.UP:
            self._table.move(host, HostState.SUSPECT)
            host.reason = f"silent for {silent:.1f} s"
            stuck = [
                bundle
                for bundle in [self._attempts[a.id][1] for a in host.running.values()]
                if not any(self._host_of(a).state is HostState.UP for a in bundle.running_attempts)
            ]
            if self._spec.enabled:
                self._rescue.extend(stuck)
            logger.warning(
                "%s: host %s has not answered for %.1f s: no new calls go there%s",
                self.name,
                host.name,
                silent,
                f"; backing up its {len(stuck)} running call(s)"
                if stuck and self._spec.enabled
                else "",
            )
            self._note_no_host(now)
        elif not suspect and host.state is HostState.SUSPECT:
            self._table.move(host, HostState.UP)
            host.reason = ""
            self._no_host_since = None
            logger.info("%s: host %s answers again", self.name, host.name)

    def _host_down(self, host: Host, reason: str, now: float) -> None:
        was_connected = host.state.connected
        host.reason = reason
        host.gen += 1  # ignore anything the old link still says
        link, host.link = host.link, None
        if link is not None:
            _close_quietly(link)
        host.backoff = min(max(_BACKOFF_START, host.backoff * 2), _BACKOFF_CAP)
        host.retry_at = now + host.backoff
        self._table.move(host, HostState.DOWN)
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
                f"host {host.name} went down ({reason})" if was_connected else reason,
            )
            host.lost += 1
            affected.append(bundle)
        for bundle in affected:
            self._attempt_failed(bundle, now)
        self._note_no_host(now)

    def _note_no_host(self, now: float) -> None:
        if self._no_host_since is None and self._table.up_count == 0:
            self._no_host_since = now

    def _timers(self, now: float) -> None:
        # a host that went down is retried with backoff even when idle (it was used, it
        # should be ready for the next call); a never-used host connects at first use
        work = self._has_work()
        if work or not self._stopping:
            for host in self._table.due_retries(now):
                self._connect(host)
        if work:
            if self._table.up_count:
                self._no_host_since = None
            elif self._no_host_since is None:
                self._no_host_since = now
            elif self._n_pending and now - self._no_host_since >= self._host_down_timeout:
                self._fail_unreachable(now)
        # (without work the clock keeps running: only a host coming up resets it)
        if now >= self._next_heartbeat:
            self._heartbeat(now)

    def _fail_unreachable(self, now: float) -> None:
        if self._no_host_since is None:  # only called while no host is up
            raise RuntimeError("no-host deadline without a start time")
        reasons = "; ".join(_describe(h) for h in self._hosts)
        message = (
            f"no host of the pool reachable for {now - self._no_host_since:.0f} s "
            f"(host_down_timeout={self._host_down_timeout:g} s): {reasons}"
        )
        logger.error("%s: %s", self.name, message)
        kinds = {h.error.kind for h in self._hosts if h.error is not None}
        kind = kinds.pop() if len(kinds) == 1 else HostErrorKind.UNREACHABLE
        # _no_host_since stays: until a host is up again, calls that become pending (new
        # ones, or ones whose attempt was lost on a host that stalled) fail at once.
        self._fail_pending(now, HostUnavailableError(message, kind, ""))

    def _fail_pending(self, now: float, error: HostUnavailableError) -> None:
        pending = [b for b in self._pending if b.state is BundleState.PENDING]
        self._pending.clear()
        self._n_pending = 0
        for bundle in pending:
            self._finish(bundle, BundleState.FAILED, now, exc=_copy_error(error))

    # ------------------------------------------------------------------
    # Heartbeat: status
    # ------------------------------------------------------------------

    def _heartbeat(self, now: float) -> None:
        self._next_heartbeat = now + self._heartbeat_interval
        if not logger.isEnabledFor(logging.INFO):
            return
        status = self.status(now)
        key = (status.done, status.in_flight, status.pending)
        if self._has_work() or key != self._last_logged:
            self._last_logged = key
            logger.info("%s", format_status(self.name, status))

    def status(self, now: float | None = None) -> PoolStatus:
        """The heartbeat data (scheduler thread only; others use ``call``). A host's row is
        rebuilt only when the host changed, so a large idle fleet costs little."""
        if now is None:
            now = self._clock()
        hosts = []
        for h in self._hosts:
            cached = h.status_cache
            if cached is not None and cached[0] == h.changes:
                hosts.append(cast(HostStatus, cached[1]))
                continue
            p50, p95 = h.percentiles()
            row = HostStatus(
                name=h.name,
                state=h.state.value,
                slots=h.slots,
                in_flight=len(h.running),
                done=h.done,
                lost=h.lost,
                p50=p50,
                p95=p95,
                reason=h.reason,
                in_flight_bundles=tuple(sorted({a.bundle_id for a in h.running.values()})),
            )
            h.status_cache = (h.changes, row)
            hosts.append(row)
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
        durations = sorted(self._durations)
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
        """Status as plain data plus the kept attempt records (scheduler thread only)."""
        data = self.status().as_dict()
        data["attempts"] = self._attempt_log.records()
        data["attempts_total"] = self._attempt_log.total
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
        self._rescue.clear()
        self._n_pending = 0
        links = []
        for host in self._hosts:
            link, host.link = host.link, None
            host.gen += 1
            if host.state is not HostState.CLOSED:
                self._table.move(host, HostState.CLOSED)
            if link is not None:
                _close_quietly(link)
                links.append(link)
        # late messages: close links that finished connecting, fail late submits
        while True:
            try:
                msg = self._q.get_nowait()
            except queue.Empty:
                break
            if msg[0] == "connected":
                _close_quietly(msg[3])
                links.append(msg[3])
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
        # Links close in the background; give them a moment together so that agents get
        # their SHUTDOWN and exit before this process does.
        deadline = time.monotonic() + _CLOSE_WAIT
        for link in links:
            wait = getattr(link, "wait_closed", None)
            if wait is not None:
                wait(max(0.0, deadline - time.monotonic()))


def _copy_error(error: HostUnavailableError) -> HostUnavailableError:
    """A fresh exception per future: a shared instance would collect every caller's frames."""
    return HostUnavailableError(str(error), error.kind, error.host)


def _describe(host: Host) -> str:
    """``host NAME: reason`` (without repeating the name when the reason starts with it)."""
    reason = host.reason or host.state.value
    if reason.startswith((f"host {host.name}", f"host {host.name!r}")):
        return reason
    return f"host {host.name}: {reason}"


def _close_quietly(link: HostLink) -> None:
    try:
        link.close()
    except Exception as exc:
        logger.debug("closing link to %s failed: %s", link.spec.name, exc)
