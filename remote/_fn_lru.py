"""The controller's record of the functions a link has sent to its agent: a bounded LRU.

The agent caches exactly the functions the link sends and drops exactly the ids the link
evicts (see the "Function caches" part of ``remote/_wire.py``), so this record *is* the
agent's cache: bounding it bounds the agent's cache and, through the forwarded evictions,
every slot's. Pure bookkeeping (no I/O, no locks): the owner serialises calls.
"""

from __future__ import annotations

from collections import OrderedDict

from ._wire import FN_CACHE_MAX_BYTES, FN_CACHE_MAX_COUNT

__all__ = ["FnLRU"]


class FnLRU:
    """Function ids with their payload sizes, least recently used first.

    ``use(fn_id, size)`` records that a SUBMIT uses the function and returns
    ``(new, evicted)``: ``new`` when the function must travel with this SUBMIT (the agent
    does not have it), ``evicted`` the ids the agent must drop *before* it (an EVICT frame).
    Entries are evicted, oldest first, until at most ``max_count`` functions and
    ``max_bytes`` bytes remain; the function just used is never evicted, so one function
    larger than ``max_bytes`` stays, alone.
    """

    __slots__ = ("_entries", "_total", "max_bytes", "max_count")

    def __init__(
        self, max_count: int = FN_CACHE_MAX_COUNT, max_bytes: int = FN_CACHE_MAX_BYTES
    ) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError(f"FnLRU needs positive bounds, got {max_count=} {max_bytes=}")
        if max_count > FN_CACHE_MAX_COUNT or max_bytes > FN_CACHE_MAX_BYTES:
            # The agent refuses a cache above the protocol's bounds (it would mean the two
            # sides are out of step), so a larger record would break the link.
            raise ValueError(
                f"FnLRU bounds may not exceed the agent's ({FN_CACHE_MAX_COUNT} functions, "
                f"{FN_CACHE_MAX_BYTES} bytes), got {max_count=} {max_bytes=}"
            )
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, int] = OrderedDict()
        self._total = 0

    def use(self, fn_id: int, size: int) -> tuple[bool, list[int]]:
        entries = self._entries
        if fn_id in entries:
            entries.move_to_end(fn_id)
            return False, []
        entries[fn_id] = size
        self._total += size
        evicted: list[int] = []
        while len(entries) > 1 and (len(entries) > self.max_count or self._total > self.max_bytes):
            old, old_size = entries.popitem(last=False)
            self._total -= old_size
            evicted.append(old)
        return True, evicted

    def __contains__(self, fn_id: object) -> bool:
        return fn_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        return self._total

    def ids(self) -> list[int]:
        """Cached ids, least recently used first."""
        return list(self._entries)
