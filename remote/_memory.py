"""Giving freed memory back to the operating system (glibc's ``malloc_trim``).

CPython returns its own small-object arenas when they empty, but objects of more than
512 bytes come from the C allocator, which keeps freed memory in its heap for reuse; after
a large burst (tens of thousands of futures) that is tens of MB of resident memory that
no one will use soon. ``malloc_trim(0)`` releases it. Elsewhere than glibc this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

__all__ = ["release_memory"]

_libc: Any = None
_looked = False


def release_memory() -> bool:
    """Ask the C allocator to return free memory to the system; True if it could."""
    global _libc, _looked
    if not _looked:
        _looked = True
        if sys.platform.startswith("linux"):
            try:
                _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            except (OSError, AttributeError):
                _libc = None
    if _libc is None:
        return False
    try:
        _libc.malloc_trim(0)
    except Exception:
        return False
    return True
