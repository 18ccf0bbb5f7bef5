"""Host selection policies: which host gets the next attempt.

The scheduler calls :meth:`SelectionPolicy.select` with the hosts that are up
and have at least one free slot, in pool order, and the names of hosts that
already ran an attempt of the bundle. :meth:`select` drops those hosts when any
other candidate remains (a retry or a backup should land somewhere else), then
asks :meth:`SelectionPolicy.choose`, the one method a custom policy implements.

Policies are called only from the scheduler thread, so they may keep state
without locks.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Collection, Sequence
from typing import Protocol, TypeVar

__all__ = [
    "HostInfo",
    "RoundRobinPolicy",
    "SelectionPolicy",
    "WeightedRandomPolicy",
    "make_policy",
]


class HostInfo(Protocol):
    """What a policy may look at for a candidate host."""

    @property
    def name(self) -> str: ...

    @property
    def index(self) -> int:
        """Position of the host in the pool configuration."""
        ...

    @property
    def weight(self) -> float: ...

    @property
    def slots(self) -> int: ...

    @property
    def free_slots(self) -> int: ...


H = TypeVar("H", bound=HostInfo)


class SelectionPolicy(abc.ABC):
    """Chooses a host among candidates that all have a free slot."""

    def prepare(self, hosts: Sequence[H]) -> None:  # noqa: B027 - optional hook
        """Called once with every host of the pool before any selection (optional)."""

    def select(self, hosts: Sequence[H], avoid: Collection[str] = ()) -> H | None:
        """Choose among *hosts*, preferring those not named in *avoid*."""
        if avoid:
            preferred = [h for h in hosts if h.name not in avoid]
            if preferred:
                hosts = preferred
        if not hosts:
            return None
        return self.choose(hosts)

    @abc.abstractmethod
    def choose(self, hosts: Sequence[H]) -> H | None:
        """Return one of *hosts* (non-empty, each with a free slot), or None to wait."""


class WeightedRandomPolicy(SelectionPolicy):
    """Pick a host at random with probability proportional to ``weight x free slots``.

    A fast host (higher weight) gets more work, and a host whose slots are all
    busy drains before it gets more.
    """

    def __init__(self, seed: int | None = None, *, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random(seed)
        self._bound: float | None = None  # max weight x slots over the pool

    def prepare(self, hosts: Sequence[H]) -> None:
        self._bound = max((max(h.weight, 0.0) * h.slots for h in hosts), default=None)

    def choose(self, hosts: Sequence[H]) -> H | None:
        if len(hosts) == 1:
            return hosts[0]
        bound = self._bound
        if bound and len(hosts) > 16:
            # Rejection sampling: a uniform pick kept with probability weight x free / bound
            # has exactly the weighted distribution, in O(1) expected tries when slots and
            # weights are alike, instead of a pass over every candidate per call.
            # One draw per try: its integer part picks the host and its fraction, uniform
            # and independent of it, decides (randrange costs more than the whole test).
            draw = self._rng.random
            count = len(hosts)
            for _ in range(64):
                point = draw() * count
                index = int(point)
                host = hosts[index]
                if (point - index) * bound < max(host.weight, 0.0) * host.free_slots:
                    return host
        weights = [max(h.weight, 0.0) * h.free_slots for h in hosts]
        total = sum(weights)
        if total <= 0:
            return hosts[self._rng.randrange(len(hosts))]
        point = self._rng.random() * total
        for host, weight in zip(hosts, weights, strict=True):
            point -= weight
            if point < 0:
                return host
        return hosts[-1]

    def __repr__(self) -> str:
        return "WeightedRandomPolicy()"


class RoundRobinPolicy(SelectionPolicy):
    """Take hosts in pool order, one attempt each, skipping hosts with no free slot."""

    def __init__(self) -> None:
        self._last = -1

    def choose(self, hosts: Sequence[H]) -> H | None:
        if not hosts:
            return None
        after = [h for h in hosts if h.index > self._last]
        chosen = min(after or hosts, key=lambda h: h.index)
        self._last = chosen.index
        return chosen

    def __repr__(self) -> str:
        return "RoundRobinPolicy()"


def make_policy(policy: str | SelectionPolicy) -> SelectionPolicy:
    """``"weighted"`` / ``"round_robin"`` or a policy instance."""
    if isinstance(policy, SelectionPolicy):
        return policy
    if policy in ("weighted", "weighted_random"):
        return WeightedRandomPolicy()
    if policy in ("round_robin", "roundrobin"):
        return RoundRobinPolicy()
    raise ValueError(
        f"unknown selection policy {policy!r}: use 'weighted', 'round_robin' or a "
        "SelectionPolicy instance"
    )
