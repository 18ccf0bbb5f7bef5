"""The health of an agent link: a pinger thread that pings on an interval adapted to the
round trip and judges the host's silence, turning the link SUSPECT past ``suspect_after``
and DOWN past ``stall_timeout`` (see :class:`~remote._link_state.LinkTiming`)."""

from __future__ import annotations

import time

from . import _wire
from ._agent_base import _LinkBase
from ._link_state import LinkState


class _Health(_LinkBase):
    """The pinger thread's part of a link."""

    def _pinger(self) -> None:
        """Ping on an interval adapted to the round trip; turn SUSPECT, then DOWN, on silence.

        A late wake-up of this thread itself (the controller starved of CPU or the GIL)
        is not held against the host: silence is judged only on punctual ticks."""
        events = self._events
        assert events is not None
        timing = self.timing

        def next_interval() -> float:
            # the agent must hear from us well within its silence limit (see __init__)
            keep_alive = self.silence_limit / 4 if self.silence_limit > 0 else float("inf")
            return min(timing.interval(self._srtt), keep_alive)

        interval = next_interval()
        while not self._stop.wait(interval):
            now = time.monotonic()
            punctual = True
            interval_before = interval
            interval = next_interval()
            silent = now - self._last_heard
            if silent > timing.stall_timeout:
                self._down_reason = (
                    f"no response from the host for {silent:.1f} s "
                    f"(stall_timeout={timing.stall_timeout:g} s)"
                )
                self._shutdown_transport()  # the reader sees EOF and reports the link down
                return
            if self._last_tick is not None and now - self._last_tick > 2 * interval_before + 0.5:
                punctual = False
            self._last_tick = now
            if punctual and silent > timing.suspect_after(self._srtt):
                if self._transition(LinkState.SUSPECT):
                    self._deliver(events.on_link_health, self, True, silent)
            elif silent < interval + 4 * (self._srtt or 0.0) + 0.05 and self._transition(
                LinkState.UP
            ):
                self._deliver(events.on_link_health, self, False, silent)
            token = next(self._tokens)
            self._ping_sent[token] = time.perf_counter()
            if len(self._ping_sent) > 64:  # unanswered pings of a silent host
                self._ping_sent.pop(next(iter(self._ping_sent)))
            self._send_urgent(_wire.encode_ping(token))
