"""Per-call timeouts in the REMOTE scheduler (scheduler thread only).

The agent enforces a call's ``timeout``: it kills the attempt's process when the time is
up and reports TIMED_OUT (``_on_timeout``). The call then fails with
:class:`~parallelize.TaskTimeoutError`, is not retried, and its backups are killed.
Because a stalled link may never deliver that report, every timed attempt also has a
fallback deadline in the controller (pushed by ``SchedulerCore._start_attempt``): its
limit plus ``timeout_grace`` (the link's stall allowance), checked by the loop.
"""

from __future__ import annotations

import heapq

from parallelize import TaskTimeoutError

from ._bundle import AttemptState, Bundle, BundleState
from ._hosts import Host
from ._sched_core import SchedulerCore
from ._sched_util import logger

__all__ = ["TimeoutWatch"]


class TimeoutWatch(SchedulerCore):
    """Timed-out attempts, reported by agents or past the controller's fallback deadline."""

    def _on_timeout(self, host: Host, attempt_id: int, ran: float) -> None:
        """The agent killed an attempt that ran past its time limit."""
        entry = self._attempts.get(attempt_id)
        if entry is None:
            return
        attempt, bundle, _ = entry
        now = self._clock()
        self._end_attempt(
            attempt, host, AttemptState.TIMED_OUT, now, f"timed out after {ran:.3g} s"
        )
        self._timed_out(bundle, host, now)

    def _check_deadlines(self, now: float) -> None:
        """Fail calls whose agent never reported their timeout (a stalled link): the
        controller's fallback, ``timeout_grace`` after the agent should have."""
        heap = self._deadlines
        if len(heap) > 2 * len(self._attempts) + 64:  # mostly calls that finished in time
            heap[:] = [item for item in heap if item[1] in self._attempts]
            heapq.heapify(heap)
        while heap and heap[0][0] <= now:
            _, attempt_id = heapq.heappop(heap)
            entry = self._attempts.get(attempt_id)
            if entry is None:
                continue  # finished in time, or already ended
            attempt, bundle, host = entry
            self._end_attempt(
                attempt,
                host,
                AttemptState.TIMED_OUT,
                now,
                f"timed out: no word from the host {self._timeout_grace:g} s past the timeout",
            )
            if host.link is not None and host.state.connected:
                try:
                    host.link.cancel(attempt_id)
                except Exception as exc:
                    logger.debug(
                        "cancel of attempt %d on %s failed: %s", attempt_id, host.name, exc
                    )
            self._timed_out(bundle, host, now)

    def _next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def _timed_out(self, bundle: Bundle, host: Host, now: float) -> None:
        """A run of *bundle* went past its timeout: the call fails (no retry), copies die."""
        if bundle.state is not BundleState.RUNNING or bundle.timeout is None:
            return
        self._cancel_attempts(bundle, now, "the call timed out")
        logger.info(
            "%s: bundle %d (%s) timed out on host %s (timeout=%gs)",
            self.name,
            bundle.id,
            bundle.fn_name,
            host.name,
            bundle.timeout,
        )
        error = TaskTimeoutError(bundle.fn_name, bundle.timeout, where=f"host {host.name}")
        self._finish(bundle, BundleState.FAILED, now, exc=error)
