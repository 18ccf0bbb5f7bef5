"""The REMOTE scheduler's status: the heartbeat log line, :meth:`status` (per-host rows
rebuilt only for hosts that changed) and :meth:`snapshot` for ``stats()`` (scheduler
thread only; see ``_scheduler`` for the threading model).
"""

from __future__ import annotations

import logging
from typing import Any, cast

from parallelize.ext import AttemptRow, HostRow

from ._bundle import BundleState
from ._heartbeat import HostStatus, PoolStatus, format_status, percentile, summary_line
from ._hosts import HostState
from ._sched_dispatch import Dispatcher
from ._sched_util import logger

__all__ = ["StatusReports"]


class StatusReports(Dispatcher):
    """Status and heartbeat (scheduler thread only)."""

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
        self._on_lane_done()  # (calls the direct lane finished since: book them first)
        if now is None:
            now = self._clock()
        hosts = []
        lane = self._lane_in_flight()  # calls on the direct lane run on the only host
        for h in self._hosts:
            cached = h.status_cache
            if cached is not None and cached[0] == h.changes and not lane:
                hosts.append(cast(HostStatus, cached[1]))
                continue
            p50, p95 = h.percentiles()
            row = HostStatus(
                name=h.name,
                state=h.state.value,
                slots=h.slots,
                in_flight=len(h.running) + lane,
                done=h.done,
                lost=h.lost,
                p50=p50,
                p95=p95,
                reason=h.reason,
                in_flight_bundles=tuple(sorted({a.bundle_id for a in h.running.values()})),
            )
            h.status_cache = (h.changes, row)
            hosts.append(row)
        eta = self._eta(now)
        durations = sorted(self._durations.values())
        counts = self._counts
        return PoolStatus(
            done=sum(counts.values()),
            in_flight=len(self._running) + lane,
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

    def _eta(self, now: float) -> float | None:
        remaining = self._n_pending + len(self._running) + self._lane_in_flight()
        if remaining == 0:
            return 0.0
        rate = self._completions.rate(now)
        return remaining / rate if rate else None

    def summary(self, now: float) -> str:
        """The progress-bar line of :meth:`status` (``format_summary``), from counters alone:
        no per-host rows, so it costs microseconds at a thousand hosts, not milliseconds."""
        self._on_lane_done()
        suspect = sum(1 for h in self._hosts if h.state is HostState.SUSPECT)
        return summary_line(
            self.name,
            up=self._table.up_count,
            suspect=suspect,
            hosts=len(self._hosts),
            in_flight=len(self._running) + self._lane_in_flight(),
            pending=self._n_pending,
            p50=percentile(sorted(self._durations.values()), 50),
            eta=self._eta(now),
            poisoned=self._counts[BundleState.POISONED],
        )

    def snapshot(self) -> tuple[dict[str, Any], tuple[AttemptRow, ...], tuple[HostRow, ...]]:
        """Status as plain data (with the attempts as dicts too, for older readers), the
        kept attempts and the host rows (scheduler thread only)."""
        status = self.status()
        data = status.as_dict()
        rows = self._attempt_log.rows()
        data["attempts"] = self._attempt_log.records()
        data["attempts_total"] = self._attempt_log.total
        # bytes written to and read from each host's current connection (links that count)
        for key in ("bytes_sent", "bytes_received"):
            data[key] = {h.name: int(getattr(h.link, key, 0)) for h in self._hosts if h.link}
        hosts = tuple(
            HostRow(
                name=h.name,
                state=h.state,
                slots=h.slots,
                in_flight=h.in_flight,
                done=h.done,
                lost=h.lost,
                p50=h.p50,
                p95=h.p95,
                reason=h.reason or None,
            )
            for h in status.hosts
        )
        return data, rows, hosts
