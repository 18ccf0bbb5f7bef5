"""The REMOTE scheduler: one thread that owns every bundle and every host.

The scheduler is split by concern along one chain of classes: ``_sched_core``
(state, bundles and attempts), ``_sched_timeouts`` (per-call timeouts),
``_sched_hosts`` (connections and host health), ``_sched_dispatch`` (dispatch,
rescues, speculation), ``_sched_status`` (status, heartbeat, snapshot) and this module
(the thread, the loop and teardown). It is a little over 400 lines because this
description of the threading model, which every part of the chain relies on, lives here.
What can be pure lives elsewhere: the host state machine and speed estimates
(``_hosts``), the host indexes (``_host_table``), the speculation policy
(``_speculation``), selection (``_policies``), status and percentiles
(``_heartbeat``), small helpers (``_sched_util``), the bounded attempt record
(``_attempt_log``), the bundle and attempt state machines (``_bundle``).

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
- the *direct lane* of a one-host embedded pool (``_lane``, ``_sched_lane``) posts
  ``lane`` when it has booked a batch of finished calls (the loop also takes them on a
  tick and before any status) and ``lane_failed`` for a call whose attempt was lost or
  timed out, which the scheduler adopts as a bundle;
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

Futures are StoppableFuture objects (smart_future), marked running when the
first attempt of their bundle is sent to a slot (a call cancelled while queued is
dropped then). ``Future.cancel()`` works until then, as in concurrent.futures;
``SmartFuture.cancel()`` (``stop()``) also cancels a running one. Either way a
done-callback notices the cancellation and posts ``cancel``; the scheduler then
kills every attempt of the bundle on its host. A result racing a cancellation is
dropped cleanly (``_settle``). Done-callbacks of futures run on the scheduler
thread: they must be quick and must not block on other futures of the same
executor.

Per-call timeouts (``CallOptions.timeout``) are enforced by the agent, which kills
the attempt's process and reports TIMED_OUT; the bundle then fails with
:class:`~parallelize.TaskTimeoutError` and is not retried (its backups are killed).
In case the link stalls, the scheduler gives up on its own ``timeout_grace``
seconds (the stall allowance) after the agent should have reported.

At interpreter exit the scheduler finishes what was submitted over connections
that are still open (its exit hook runs before ordinary ``atexit`` handlers,
paramiko's among them, which would close every connection first and make the
calls in flight run twice), then closes its links.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any, TypeVar

from parallelize import TaskLostError
from parallelize.ext import (
    ExitStage,
    Outcome,
    at_threads_exit,
    release_memory,
    waits_at_exit,
)

from ._bundle import Bundle, BundleState
from ._hosts import HostState
from ._sched_core import LinkFactory
from ._sched_lane import LaneBooking
from ._sched_util import close_quietly, logger, warn_visibly

__all__ = ["LinkFactory", "Scheduler", "warn_visibly"]

T = TypeVar("T")

_MAX_BATCH = 512  # messages handled before dispatching again
_CLOSE_WAIT = 3.0  # seconds teardown waits, in all, for links to finish closing
_TRIM_AFTER = 1000  # calls finished since the last trim before an idle scheduler trims
_TRIM_DELAY = 0.5  # seconds idle before it does
_PUBLISH = 0.2  # seconds between two status snapshots for progress bars
_LANE_TICK = 0.1  # seconds between bookings of the direct lane's calls while it works


# The schedulers to finish at exit. Schedulers, not executors: one keeps running the calls
# of a RemoteExecutor dropped without shutdown, and exit still waits for them.
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


# The one exit hook of parallelize runs this. It is a threading exit hook, which runs
# before atexit's (concurrent.futures relies on the same): paramiko's atexit handler
# closes every SSH connection, and if it ran first the calls in flight would be lost
# and run again. Before the process pools' stage: the embedded pool runs on one.
at_threads_exit(_finish_all_at_exit, ExitStage.SCHEDULERS)


class Scheduler(LaneBooking):
    """Runs bundles on a pool of hosts; see the module docstring for the threading model."""

    _thread: threading.Thread
    _trim_at: float | None = None
    published_summary: str | None = None
    published_idle = True
    _publish_at = 0.0
    _publish_due = False
    _trimmed_at_done = 0

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"{self.name}-scheduler", daemon=True
        )
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
            self._sync_lane()
            now = self._clock()
            self._timers(now)
            self._check_deadlines(now)
            self._dispatch(now)
            self._speculate(now)
            self._flush_links(now)
            self._idle_memory(now)
            self._publish_status(now)
            if self._stopping and not self._has_work():
                self._teardown("the executor was shut down")
                return

    def _publish_status(self, now: float) -> None:
        """Refresh ``published_summary`` (the progress-bar line, read on other threads
        without waiting for this one) at most every ``_PUBLISH`` seconds while there is
        work, and ``published_idle``."""
        if not self._has_work():
            self.published_idle = True  # nothing to show (and nothing to compute)
            self._publish_due = False  # (else an idle loop would keep waking for it)
            return
        self.published_idle = False
        if now < self._publish_at:  # (a call after an idle moment must not pay for one)
            # Published too recently: the loop wakes up at _publish_at for it, or a line
            # from before a host came up would stay on the bar while long calls run.
            self._publish_due = True
            return
        self._publish_due = False
        self._publish_at = now + _PUBLISH
        self.published_summary = self.summary(now)  # one reference swap: atomic

    def _idle_memory(self, now: float) -> None:
        """A moment after a run of many calls ends, give freed memory back to the system.

        The futures of a large run are freed when the caller drops them, usually right
        after; what they leave is scattered through the C heap, which glibc keeps unless
        asked (``malloc_trim``). Once per run, on this thread, while it has nothing to do."""
        if self._has_work():
            self._trim_at = None
            return
        done = sum(self._counts.values())
        if done - self._trimmed_at_done < _TRIM_AFTER:
            return
        if self._trim_at is None:
            self._trim_at = now + _TRIM_DELAY
        elif now >= self._trim_at:
            self._trim_at = None
            self._trimmed_at_done = done
            release_memory()

    def _next_wakeup(self) -> float:
        wake = self._next_heartbeat
        if self._trim_at is not None:
            wake = min(wake, self._trim_at)
        if self._has_work() or not self._stopping:
            retry = self._table.next_retry()
            if retry is not None:
                wake = min(wake, retry)
        if self._no_host_since is not None and self._n_pending:
            wake = min(wake, self._no_host_since + self._host_down_timeout)
        if self._next_speculation is not None:
            wake = min(wake, self._next_speculation)
        if self._publish_due:
            wake = min(wake, self._publish_at)
        lane = self._lane
        if lane is not None and (lane.in_flight or lane.has_done):
            # The lane wakes this thread only per batch of calls, or when it goes idle:
            # book the others on a tick, as the progress line wants them.
            wake = min(wake, self._clock() + _LANE_TICK)
        deadline = self._next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        return wake

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "result":
            _, host, gen, attempt_id, ok, payload, duration = msg
            self._on_result(host, attempt_id, ok, payload, duration)
        elif kind == "lane":
            self._on_lane_done()
        elif kind == "submit":
            self._on_submit(msg[1])
        elif kind == "lost":
            _, host, gen, attempt_id, reason = msg
            self._on_lost(host, attempt_id, reason)
        elif kind == "timeout":
            _, host, gen, attempt_id, ran = msg
            self._on_timeout(host, attempt_id, ran)
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
        elif kind == "lane_failed":
            self._on_lane_failed(msg[1])
        elif kind == "heartbeat":
            self._heartbeat(self._clock())
        elif kind == "stop":
            self._stopping = True
            if self._lane is not None:
                self._lane.wake_when_idle = True
        elif kind == "abort":
            self._aborting = msg[1]
        else:  # a bug
            raise RuntimeError(f"unknown scheduler message {kind!r}")

    # ------------------------------------------------------------------
    # Bundles
    # ------------------------------------------------------------------

    # ------------------------------------------------------------------
    # Speculation: backups of stragglers on idle slots
    # ------------------------------------------------------------------

    # ------------------------------------------------------------------
    # Hosts
    # ------------------------------------------------------------------

    # ------------------------------------------------------------------
    # Teardown
    # ------------------------------------------------------------------

    def _teardown(self, reason: str) -> None:
        """Fail whatever is unfinished, close every link, stop accepting connections."""
        with self._closed_lock:
            self._closed = True
        if self._lane is not None:
            self._lane.close()  # its calls still in the pool die with the link, below
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
                close_quietly(link)
                links.append(link)
        # late messages: close links that finished connecting, fail late submits
        while True:
            try:
                msg = self._q.get_nowait()
            except queue.Empty:
                break
            if msg[0] == "connected":
                close_quietly(msg[3])
                links.append(msg[3])
            elif msg[0] == "submit" and not msg[1].state.terminal:
                self._finish(
                    msg[1],
                    BundleState.FAILED,
                    now,
                    exc=TaskLostError(f"{msg[1].fn_name}: {reason}"),
                )
            elif msg[0] == "lane_failed":
                self._lost_at_close(msg[1], reason)
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
