"""The words a link's parts share: :class:`LinkState` and the transitions it allows, and
:class:`LinkTiming`, how a link watches its host (ping interval, suspect and stall limits).

Pure data: the state itself lives on the link and changes only through
``_LinkBase._transition`` (``remote/_agent_base.py``), which checks this table."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["LinkState", "LinkTiming"]


class LinkState(enum.Enum):
    """Where a link is in its life (see ``_LINK_TRANSITIONS`` for what may follow what)."""

    NEW = "new"
    CONNECTING = "connecting"
    UP = "up"
    SUSPECT = "suspect"  # connected, but the host has been silent past suspect_after
    DOWN = "down"  # the connection broke or stalled; terminal but for CLOSED
    CLOSED = "closed"  # closed on purpose (or after DOWN); terminal


_LINK_TRANSITIONS: dict[LinkState, frozenset[LinkState]] = {
    LinkState.NEW: frozenset({LinkState.CONNECTING, LinkState.CLOSED}),
    LinkState.CONNECTING: frozenset({LinkState.UP, LinkState.DOWN, LinkState.CLOSED}),
    LinkState.UP: frozenset({LinkState.SUSPECT, LinkState.DOWN, LinkState.CLOSED}),
    LinkState.SUSPECT: frozenset({LinkState.UP, LinkState.DOWN, LinkState.CLOSED}),
    LinkState.DOWN: frozenset({LinkState.CLOSED}),
    LinkState.CLOSED: frozenset(),
}


@dataclass(frozen=True)
class LinkTiming:
    """How a link watches its host.

    ``ping_interval``: None adapts it to the smoothed round trip (``ping_rtt_factor`` x
    RTT, kept between ``ping_min`` and ``ping_max``). The host is *suspect* after
    ``max(suspect_min, 2 x ping interval + 8 x RTT)`` seconds of silence and *down*
    after ``stall_timeout``. The agent exits after ``silence_limit`` seconds without a
    byte from the controller (None: ``stall_timeout + 4 x ping_max``)."""

    stall_timeout: float = 10.0
    ping_interval: float | None = None
    ping_min: float = 0.25
    ping_max: float = 1.0
    ping_rtt_factor: float = 20.0
    suspect_min: float = 1.0
    silence_limit: float | None = None

    def __post_init__(self) -> None:
        if not self.stall_timeout > 0:
            raise ValueError(f"stall_timeout must be positive, got {self.stall_timeout!r}")
        if self.ping_interval is not None and not self.ping_interval > 0:
            raise ValueError(f"ping_interval must be positive, got {self.ping_interval!r}")

    @property
    def agent_silence_limit(self) -> float:
        if self.silence_limit is not None:
            return self.silence_limit
        return self.stall_timeout + 4 * max(self.ping_max, self.ping_interval or 0.0)

    def interval(self, srtt: float | None) -> float:
        if self.ping_interval is not None:
            return self.ping_interval
        if srtt is None:
            return self.ping_min
        return min(self.ping_max, max(self.ping_min, self.ping_rtt_factor * srtt))

    def suspect_after(self, srtt: float | None) -> float:
        rtt = srtt or 0.0
        return min(self.stall_timeout, max(self.suspect_min, 2 * self.interval(srtt) + 8 * rtt))
