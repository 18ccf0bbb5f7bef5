"""Give memory back to the system when a worker goes idle after a large call.

A large call leaves garbage (reference cycles) and freed heap memory that
glibc keeps for later (freed chunks in its arenas, top of the heap); an idle
worker would hold it for as long as it lives. ``release_if_grown`` runs a
garbage collection and ``malloc_trim(0)`` (glibc only; looked up with ctypes
once) when the resident size has grown by more than a few megabytes since the
last release, so small calls never pay for it. It reads ``/proc/self/statm``
(Linux; elsewhere it only collects when asked with ``force``).

Standard library only: imported by the worker.
"""

from __future__ import annotations

import gc
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["release_if_grown", "resident_bytes", "trim_c_heap"]

GROWTH_TRIGGER = 8 << 20  # bytes of growth since the last release that make it worth one

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_baseline: int | None = None
_trim: Callable[[int], int] | bool | None = False  # False: not looked up yet


def resident_bytes() -> int | None:
    """This process's resident set size, or None where /proc is missing."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    global _trim
    if _trim is False:
        _trim = None
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            trim = libc.malloc_trim  # AttributeError on non-glibc systems
            trim.argtypes = [ctypes.c_size_t]
            trim.restype = ctypes.c_int
            _trim = trim
        except (OSError, AttributeError, ImportError):
            _trim = None
    return _trim if callable(_trim) else None


def trim_c_heap() -> bool:
    """Give the C heap's free memory back to the system (glibc); False where it cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def release_if_grown(force: bool = False) -> bool:
    """Collect garbage and trim the C heap if the process grew since the last release.

    Returns True when it released. The first call only records the baseline.
    """
    global _baseline
    rss = resident_bytes()
    if not force:
        if rss is None:
            return False
        if _baseline is None or rss < _baseline:
            _baseline = rss
            return False
        if rss - _baseline < GROWTH_TRIGGER:
            return False
    gc.collect()
    trim_c_heap()
    _baseline = resident_bytes()
    return True
