"""Host health for the REMOTE scheduler: connecting, permanent and transient failures,
suspect hosts, hosts going down, reconnect backoff and the no-host deadline.

Runs on the scheduler thread only; connections are made on short-lived connect threads
that post their outcome back (see ``_scheduler``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._bundle import AttemptState
from ._errors import HostErrorKind, HostUnavailableError
from ._hosts import Host, HostState
from ._link import Delivered, HostLink
from ._sched_timeouts import TimeoutWatch
from ._sched_util import close_quietly, logger, warn_visibly

__all__ = ["HostEvents", "HostHealth", "describe"]

_BACKOFF_START = 1.0
_BACKOFF_CAP = 60.0
_BROKEN_BACKOFF_START = 30.0  # a permanent error needs a person: retry rarely
_BROKEN_BACKOFF_CAP = 600.0


class HostEvents:
    """LinkEvents for one connection of one host: posts everything to the scheduler."""

    __slots__ = ("_gen", "_host", "_post")

    def __init__(self, post: Callable[[tuple[Any, ...]], None], host: Host, gen: int) -> None:
        self._post = post
        self._host = host
        self._gen = gen

    def on_result(
        self,
        link: HostLink,
        attempt_id: int,
        ok: bool,
        payload: bytes | Delivered,
        duration: float,
    ) -> None:
        self._post(("result", self._host, self._gen, attempt_id, ok, payload, duration))

    def on_attempt_lost(self, link: HostLink, attempt_id: int, reason: str) -> None:
        self._post(("lost", self._host, self._gen, attempt_id, reason))

    def on_attempt_timeout(self, link: HostLink, attempt_id: int, ran: float) -> None:
        self._post(("timeout", self._host, self._gen, attempt_id, ran))

    def on_link_down(self, link: HostLink, reason: str) -> None:
        self._post(("down", self._host, self._gen, reason))

    def on_link_health(self, link: HostLink, suspect: bool, silent: float) -> None:
        self._post(("health", self._host, self._gen, suspect, silent))


class HostHealth(TimeoutWatch):
    """Connections and host states (scheduler thread only)."""

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
        # (a host that connects runs nothing: its attempts ended when it went down)
        host.set_prefetches(bool(getattr(link, "prefetches", False)))
        events = HostEvents(self._q.put, host, gen)
        threading.Thread(
            target=self._connect_worker,
            args=(host, gen, link, events),
            name=f"{self.name}-connect-{host.name}",
            daemon=True,
        ).start()

    def _connect_worker(self, host: Host, gen: int, link: HostLink, events: HostEvents) -> None:
        error: BaseException | None = None
        try:
            link.connect(events)
        except BaseException as exc:
            error = exc
        with self._closed_lock:
            if not self._closed:
                self._q.put(("connected", host, gen, link, error))
                return
        close_quietly(link)

    def _on_connected(
        self, host: Host, gen: int, link: HostLink, error: BaseException | None
    ) -> None:
        now = self._clock()
        if gen != host.gen or host.state is not HostState.CONNECTING:
            close_quietly(link)
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
            close_quietly(link)
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
            self._mark_down(host, str(failure), now)
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
            close_quietly(link)
        self._mark_down(host, reason, now)
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

    def _mark_down(self, host: Host, reason: str, now: float) -> None:
        """DOWN, to be retried after a doubling backoff (a transient failure)."""
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
        reasons = "; ".join(describe(h) for h in self._hosts)
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

    def _heartbeat(self, now: float) -> None:
        raise NotImplementedError  # the Scheduler logs the status


def describe(host: Host) -> str:
    """``host NAME: reason`` (without repeating the name when the reason starts with it)."""
    reason = host.reason or host.state.value
    if reason.startswith((f"host {host.name}", f"host {host.name!r}")):
        return reason
    return f"host {host.name}: {reason}"
