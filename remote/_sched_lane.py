"""The scheduler's side of the direct lane (``_lane``): open it while its one host is UP
on a ProcessLink, book the calls it ran, and adopt those whose attempt failed.

Everything here runs on the scheduler thread, except ``_adopt_lane`` (the pool's result
thread), which only posts a message or, once the scheduler is closed, fails the call.
"""

from __future__ import annotations

from parallelize import TaskLostError
from parallelize.ext import Outcome

from ._bundle import Attempt, AttemptState, Bundle, BundleState
from ._hosts import HostState
from ._lane import BOOKED_CANCELLED, BOOKED_FAILED, LaneFailure
from ._process_link import ProcessLink
from ._sched_status import StatusReports
from ._sched_util import logger, settle

__all__ = ["LaneBooking"]


class LaneBooking(StatusReports):
    """Direct-lane bookkeeping (see the module doc)."""

    def _sync_lane(self) -> None:
        """Open the lane while the pool's one host is UP on a ProcessLink, else close it.
        (Called after every batch of events: a host that went down in the batch has its
        link closed already, so a call that slips into the lane meanwhile is refused by
        the closing pool and goes through the scheduler.)"""
        lane = self._lane
        if lane is None:
            return
        host = self._hosts[0]
        link = host.link
        if host.state is HostState.UP and isinstance(link, ProcessLink) and not self._stopping:
            if not lane.is_open:
                executor = link.lane_executor()
                if executor is not None:
                    lane.open(executor)
        elif lane.is_open:
            lane.close()

    def _on_lane_done(self) -> None:
        """Book the calls the lane finished: what ``_on_result``/``_finish`` would have,
        for a whole batch at once (one loop, then one call per record keeper)."""
        lane = self._lane
        if lane is None:
            return
        done = lane.take_done()
        if not done:
            return
        host = self._hosts[0]
        lane_row = self._lane_row
        t0 = self._t0
        durations: list[float] = []
        runs: list[tuple[int, int, int, float, float, bool]] = []
        failed = cancelled = 0
        for bundle_id, attempt_id, seconds, outcome, end, worker in done:
            row, start = lane_row(worker, end - seconds, end)
            if outcome == BOOKED_CANCELLED:
                cancelled += 1
                runs.append((bundle_id, attempt_id, row, start - t0, end - t0, False))
                continue
            if outcome == BOOKED_FAILED:
                failed += 1
            durations.append(seconds)
            runs.append((bundle_id, attempt_id, row, start - t0, end - t0, True))
        count = len(done)
        self._submitted += count
        self._completions.add(done[-1][4], count)
        counts = self._counts
        counts[BundleState.SUCCEEDED] += count - failed - cancelled
        counts[BundleState.FAILED] += failed
        counts[BundleState.CANCELLED] += cancelled
        host.record_durations(durations)
        self._durations.extend(durations)
        self._attempt_log.add_runs(host.name, runs)
        host.changes += 1  # its status row (done, p50) is stale

    def _new_lane_row(self, worker: int, start: float) -> int:
        """The timeline row of a worker seen for the first time: one row per worker
        process (the pool does not number its workers; one that replaced a dead worker
        takes the row idle longest)."""
        rows = self._lane_rows
        ends = self._lane_row_ends
        if len(ends) < self._hosts[0].slots:
            row = len(ends)
            ends.append(start)
        else:
            row = min(range(len(ends)), key=ends.__getitem__)
            for pid, taken in list(rows.items()):
                if taken == row:
                    del rows[pid]
        if worker:
            rows[worker] = row
        return row

    def _lane_row(self, worker: int, start: float, end: float) -> tuple[int, float]:
        """The timeline row of a lane call ran by *worker*, and when it started there. A
        worker runs one call at a time, but results read together are seen at the same
        moment: a call starts no earlier than the last one of its row ended."""
        row = self._lane_rows.get(worker)
        if row is None:
            row = self._new_lane_row(worker, start)
        ends = self._lane_row_ends
        last = ends[row]
        if start < last:
            start = last if last < end else end
        if end > last:
            ends[row] = end
        return row, start

    def _adopt_lane(self, failure: LaneFailure) -> None:
        """(The pool's result thread.) Hand a failed lane call to the scheduler thread."""
        with self._closed_lock:
            if not self._closed:
                self._q.put(("lane_failed", failure))
                return
        self._lost_at_close(failure, "the remote scheduler has stopped")

    def _lost_at_close(self, failure: LaneFailure, reason: str) -> None:
        future = failure.future
        name = future.fn_name
        future.drop_call().close()
        if settle(future, exc=TaskLostError(f"{name}: {reason}")):
            self._stats.task_finished(Outcome.FAILED, None)
        else:
            self._stats.task_finished(Outcome.CANCELLED, None)

    def _on_lane_failed(self, failure: LaneFailure) -> None:
        """A lane call's attempt was lost or timed out: make it the bundle it would have
        been had the scheduler started that attempt, then end the attempt the usual way
        (retry, poison, or fail with ``TaskTimeoutError``)."""
        self._on_lane_done()  # earlier calls first: the attempt log stays in order
        now = self._clock()
        host = self._hosts[0]
        future = failure.future
        name = future.fn_name
        call = future.drop_call()  # the bundle's now
        bundle = Bundle(
            future.bundle_id,
            name,
            call.fn_bytes,
            call.args_bytes,
            future,
            now,
            timeout=future.timeout,
            local_call=call,
        )
        self._submitted += 1
        bundle.fn_id = self._function_id(bundle.fn_payload)
        start = future.started_at if future.started_at is not None else now
        bundle.transition(BundleState.RUNNING, start)
        bundle.started_at = start
        row, start = self._lane_row(future.worker_pid, start, now)
        attempt = Attempt(future.attempt_id, bundle.id, host.name, row, start, False)
        bundle.attempts.append(attempt)
        self._running[bundle.id] = bundle
        future.bundle = bundle  # a cancel from now on reaches this thread
        state = AttemptState.LOST if failure.lost else AttemptState.TIMED_OUT
        attempt.finish(state, now, failure.reason)
        self._attempt_log.add(
            bundle.id,
            attempt.id,
            host.name,
            row,
            start - self._t0,
            now - self._t0,
            state.value,
            False,
            failure.reason,
        )
        if future.cancelled():  # stopped while its worker was dying
            self._finish(bundle, BundleState.CANCELLED, now)
        elif failure.lost:
            host.lost += 1
            logger.warning(
                "%s: attempt %d of bundle %d (%s) lost on host %s: %s",
                self.name,
                attempt.id,
                bundle.id,
                bundle.fn_name,
                host.name,
                failure.reason,
            )
            self._attempt_failed(bundle, now)
        else:
            self._timed_out(bundle, host, now)
