"""The link's function-cache record (pure LRU logic; the agent mirrors it, see test_agent)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remote import _wire
from remote._fn_lru import FnLRU


def test_new_then_cached() -> None:
    lru = FnLRU(3, 100)
    assert lru.use(1, 10) == (True, [])
    assert lru.use(1, 10) == (False, [])
    assert 1 in lru and len(lru) == 1 and lru.total_bytes == 10


def test_evicts_least_recently_used_by_count() -> None:
    lru = FnLRU(3, 1000)
    for fn_id in (1, 2, 3):
        lru.use(fn_id, 1)
    lru.use(1, 1)  # 2 is now the oldest
    assert lru.use(4, 1) == (True, [2])
    assert lru.ids() == [3, 1, 4]


def test_evicts_by_bytes_oldest_first() -> None:
    lru = FnLRU(10, 100)
    lru.use(1, 40)
    lru.use(2, 40)
    lru.use(3, 10)
    assert lru.use(4, 60) == (True, [1, 2])
    assert lru.total_bytes == 70 and lru.ids() == [3, 4]


def test_a_function_above_the_byte_bound_stays_alone() -> None:
    lru = FnLRU(10, 100)
    lru.use(1, 10)
    lru.use(2, 10)
    assert lru.use(3, 500) == (True, [1, 2])
    assert lru.ids() == [3]
    assert lru.use(4, 1) == (True, [3])  # the next function pushes it out


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        FnLRU(0, 10)
    with pytest.raises(ValueError, match="may not exceed the agent's"):
        FnLRU(_wire.FN_CACHE_MAX_COUNT + 1)
    default = FnLRU()
    assert (default.max_count, default.max_bytes) == (
        _wire.FN_CACHE_MAX_COUNT,
        _wire.FN_CACHE_MAX_BYTES,
    )


@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 50)), max_size=300),
    st.integers(1, 8),
    st.integers(1, 120),
)
def test_mirror_stays_in_step_and_bounded(
    uses: list[tuple[int, int]], max_count: int, max_bytes: int
) -> None:
    """A mirror that only adds what is sent and drops what is evicted (the agent's rule)
    always holds exactly the LRU's ids, within the bounds (or one oversized function)."""
    lru = FnLRU(max_count, max_bytes)
    mirror: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for fn_id, size in uses:
        size = sizes.setdefault(fn_id, size)  # a function id always has the same payload
        new, evicted = lru.use(fn_id, size)
        for old in evicted:
            del mirror[old]  # KeyError here = out of step
        assert new == (fn_id not in mirror)
        mirror[fn_id] = size
        assert sorted(mirror) == sorted(lru.ids())
        assert len(mirror) <= max_count
        assert sum(mirror.values()) <= max_bytes or len(mirror) == 1
        assert lru.total_bytes == sum(mirror.values())
