"""Host selection policies."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from remote._policies import (
    RoundRobinPolicy,
    SelectionPolicy,
    WeightedRandomPolicy,
    make_policy,
)


@dataclass
class H:
    name: str
    index: int
    weight: float = 1.0
    slots: int = 1
    free_slots: int = 1


def test_weighted_respects_weight_times_free_slots() -> None:
    hosts = [
        H("a", 0, weight=1.0, slots=2, free_slots=2),
        H("b", 1, weight=3.0, slots=2, free_slots=1),
        H("c", 2, weight=0.5, slots=8, free_slots=8),
    ]
    # expected shares: a 2, b 3, c 4 (out of 9)
    policy = WeightedRandomPolicy(seed=1234)
    n = 90_000
    counts = Counter(policy.select(hosts).name for _ in range(n))  # type: ignore[union-attr]
    for name, share in (("a", 2 / 9), ("b", 3 / 9), ("c", 4 / 9)):
        assert counts[name] / n == pytest.approx(share, abs=0.01)


def test_weighted_keeps_its_distribution_on_large_pools() -> None:
    # Over 16 candidates the policy samples by rejection, one random draw per try.
    hosts = [
        H(f"h{i}", i, weight=(1.0, 2.0)[i % 2], slots=4, free_slots=1 + i % 4) for i in range(40)
    ]
    policy = WeightedRandomPolicy(seed=99)
    policy.prepare(hosts)
    n = 200_000
    counts = Counter(policy.select(hosts).name for _ in range(n))  # type: ignore[union-attr]
    total = sum(h.weight * h.free_slots for h in hosts)
    for host in hosts:
        assert counts[host.name] / n == pytest.approx(
            host.weight * host.free_slots / total, abs=0.004
        )


def test_weighted_is_deterministic_with_a_seed() -> None:
    hosts = [H("a", 0), H("b", 1), H("c", 2)]
    picks1 = [WeightedRandomPolicy(seed=7).select(hosts) for _ in range(1)]
    p1, p2 = WeightedRandomPolicy(seed=7), WeightedRandomPolicy(rng=random.Random(7))
    seq1 = [p1.select(hosts).name for _ in range(50)]  # type: ignore[union-attr]
    seq2 = [p2.select(hosts).name for _ in range(50)]  # type: ignore[union-attr]
    assert seq1 == seq2
    assert picks1[0] is not None


def test_weighted_zero_weights_still_choose() -> None:
    hosts = [H("a", 0, weight=0.0), H("b", 1, weight=0.0)]
    assert WeightedRandomPolicy(seed=0).select(hosts) in hosts


def test_round_robin_order_and_skipping() -> None:
    a, b, c = H("a", 0), H("b", 1), H("c", 2)
    policy = RoundRobinPolicy()
    assert [policy.select([a, b, c]).name for _ in range(7)] == list("abcabca")  # type: ignore[union-attr]
    # next after "a" is "b", but b is full: skip to c, then wrap around
    assert policy.select([a, c]) is c
    assert policy.select([a, b, c]) is a
    assert policy.select([c]) is c


@pytest.mark.parametrize("policy", [WeightedRandomPolicy(seed=3), RoundRobinPolicy()])
def test_avoids_previous_hosts_when_possible(policy: SelectionPolicy) -> None:
    hosts = [H("a", 0, weight=100.0), H("b", 1), H("c", 2, weight=100.0)]
    for _ in range(200):
        chosen = policy.select(hosts, avoid={"a", "c"})
        assert chosen is not None and chosen.name == "b"
    # every candidate ran it before: still choose one rather than wait
    assert policy.select(hosts, avoid={"a", "b", "c"}) in hosts
    assert policy.select([], avoid={"a"}) is None


def test_custom_policy() -> None:
    class Last(SelectionPolicy):
        def choose(self, hosts: Sequence[H]) -> H | None:  # type: ignore[override]
            return hosts[-1]

    hosts = [H("a", 0), H("b", 1), H("c", 2)]
    assert Last().select(hosts).name == "c"  # type: ignore[union-attr]
    assert Last().select(hosts, avoid={"c"}).name == "b"  # type: ignore[union-attr]


def test_make_policy() -> None:
    assert isinstance(make_policy("weighted"), WeightedRandomPolicy)
    assert isinstance(make_policy("round_robin"), RoundRobinPolicy)
    policy = RoundRobinPolicy()
    assert make_policy(policy) is policy
    with pytest.raises(ValueError, match="unknown selection policy"):
        make_policy("fastest")
