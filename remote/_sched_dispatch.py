"""Dispatch and speculation for the REMOTE scheduler: which queued call starts on which
free slot, calls rescued from SUSPECT hosts, and backups of stragglers (the policy itself
is in ``_speculation``), and handing local links each round of attempts as one batch.
Runs on the scheduler thread only.
"""

from __future__ import annotations

from typing import cast

from ._bundle import Bundle, BundleState
from ._hosts import Host, HostState
from ._link import LocalCallLink
from ._sched_hosts import HostHealth
from ._sched_util import copy_error
from ._speculation import feeds_slow_host, remaining_time, worth_backup

__all__ = ["Dispatcher"]

_SCAN = 0.02  # seconds between two speculation scans at most
_STALE = 0.5  # seconds speculation waits for a busy queue to drain, at most


class Dispatcher(HostHealth):
    """Starting attempts: queued calls, rescues and backups (scheduler thread only)."""

    def _on_submit(self, bundle: Bundle) -> None:
        self._submitted += 1
        if bundle.future.cancelled():  # cancelled before we even saw it
            self._finish(bundle, BundleState.CANCELLED, self._clock())
            return
        bundle.fn_id = self._function_id(bundle.fn_payload)
        broken = self._broken_error() if self._table.up_count == 0 else None
        if broken is not None:
            self._finish(bundle, BundleState.FAILED, self._clock(), exc=copy_error(broken))
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
        A call's ``avoid_hosts`` (hosts where earlier submissions of it failed) are only
        a preference: another free host is chosen when there is one, never waited for.
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
            avoid = tried | bundle.avoid_hosts if bundle.avoid_hosts else tried
            host = self._policy.select(candidates, avoid)
            if host is None:
                return
            pending.popleft()
            self._n_pending -= 1
            self._start_attempt(bundle, host, now, is_backup=False)
            if candidates is not self._table.free and host.free_slots == 0:
                candidates.remove(host)  # (the table's own list updates itself)

    def _flush_links(self, now: float) -> None:
        """Hand each local link the attempts started on it this round (one batch each)."""
        while self._to_flush:
            host = self._to_flush.pop()
            link = host.link
            if link is None or not host.state.connected:
                continue  # went down meanwhile: its attempts were ended with it
            try:
                cast(LocalCallLink, link).flush_local()
            except Exception as exc:
                self._host_down(host, f"could not send attempts: {type(exc).__name__}: {exc}", now)

    def _feedable_hosts(self, now: float) -> list[Host]:
        """Hosts with a free slot, less those much slower than the rest while the faster
        ones can drain the queue sooner (see ``_speculation``). A slow host that has had
        nothing to do for a while gets one call, so that its estimate can recover.

        Usually this is the host table's own list of free hosts (no copy); only the hosts
        the table last found slow are looked at, so a pass costs O(slow hosts)."""
        table = self._table
        free = table.free
        if not free or not self._spec.enabled:
            return free
        factor = self._spec.slow_factor
        table.refresh_speeds(now, factor)
        if not table.spread or not table.slow:
            return free
        held: set[int] = set()
        for host in table.slow:
            if host.free_slots == 0:
                continue
            est = host.speed_estimate(now)
            if feeds_slow_host(est, table.fastest, table.fast_rate, self._n_pending, factor):
                continue
            if est is not None and not host.running and now - host.last_start > 2 * est:
                continue  # a probe: the host may have recovered
            held.add(host.index)
        if not held:
            return free
        return [host for host in free if host.index not in held]

    def _serve_rescue(self, now: float) -> None:
        rescue = self._rescue
        while rescue:
            bundle = rescue[0]
            running = bundle.running_attempts
            if (
                bundle.state is not BundleState.RUNNING
                or not running
                or not bundle.allow_backups
                or any(self._host_of(a).state is HostState.UP for a in running)
            ):
                rescue.popleft()
                continue
            busy = {a.host for a in running}
            options = [h for h in self._table.free if h.name not in busy]
            if not options:
                return
            host = self._policy.select(options, bundle.tried_hosts | bundle.avoid_hosts)
            if host is None:
                return
            rescue.popleft()
            self._start_attempt(bundle, host, now, is_backup=True)

    def cancel_pending(self) -> int:
        """Cancel every bundle that has not started (run on the scheduler thread).

        Bundles that a free slot can take right now are started first, as a worker of
        a standard pool would already have picked them up. A call queued again after its
        attempt was lost has started (its future is running): it stays queued."""
        now = self._clock()
        self._dispatch(now)
        self._flush_links(now)  # the attempts free workers take start now (marked running)
        count = 0
        kept = []
        for bundle in self._pending:
            if bundle.state is not BundleState.PENDING:
                continue
            if bundle.future.cancel():
                self._n_pending -= 1
                self._finish(bundle, BundleState.CANCELLED, now)
                count += 1
            else:
                kept.append(bundle)
        self._pending.clear()
        self._pending.extend(kept)
        if self._lane is not None:  # calls on the direct lane still waiting in the pool
            count += self._lane.cancel_queued()
        for bundle in list(self._running.values()):
            # sent to a prefetching host but waiting there behind another call: not started
            if bundle.local_call is not None and bundle.future.cancel():
                self._cancel_attempts(bundle, now, "cancelled by the user")
                self._finish(bundle, BundleState.CANCELLED, now)
                count += 1
        return count

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
        if not self._q.empty() and now - self._speculation_scan_at < _STALE:
            # Messages wait (a burst the loop handles in batches): some may finish the very
            # attempts that would look like stragglers. Handle them first (the loop comes
            # straight back), but not for longer than _STALE of a saturated queue.
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
            if (
                not running
                or not bundle.future.running()  # waiting at its host (prefetched), not run
                or not bundle.allow_backups
                or bundle.backups >= cfg.max_backups_per_bundle
            ):
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
