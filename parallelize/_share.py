"""``share(obj)``: one large object used by many calls, sent once per worker host.

A :class:`Shared` handle wraps the object. Passed as an argument (a top-level positional or
keyword argument) to a parallelized call, the function receives the object itself:

- THREAD: the executor hands over the object (no copy at all);
- PROCESS (and any executor that pickles the handle): the handle pickles *as the object*
  (its ``__reduce__`` rebuilds the object, with the standard library only), so it takes
  the same path as the object would, shared memory included;
- REMOTE: the executor recognises the handle, sends the object's pickled bytes to each host
  once (content-addressed by their hash) and later calls refer to it by that hash. The
  bytes and the hash are computed once, on first use, and kept by the handle, so a 50 MB
  array is not pickled again for every call.

The object is pickled at its first REMOTE use: changing it after that does not reach hosts
(make a new handle). Workers must treat it as read-only (REMOTE hands out read-only numpy
arrays, see the README's large-data section).
"""

from __future__ import annotations

import hashlib
import operator
import threading
from typing import Any, Generic, TypeVar

from ._pickling import dumps

__all__ = ["Shared", "blob_digest", "pickled_shared", "share", "unwrap_shared"]

T = TypeVar("T")

# True once any handle exists: until then executors skip looking for handles (THREAD's
# per-call budget is a few hundred nanoseconds).
handles_exist = False


def blob_digest(data: bytes) -> bytes:
    """The content address of pickled bytes: SHA-256 (faster than BLAKE2b on hosts with
    SHA instructions, which is most; measured 0.22 s vs 0.50 s for 50 MB on the dev box)."""
    return hashlib.sha256(data).digest()


class Shared(Generic[T]):
    """A handle on an object that many calls use; see :func:`share`."""

    __slots__ = ("__weakref__", "_lock", "_obj", "_pickled")

    def __init__(self, obj: T) -> None:
        global handles_exist
        if isinstance(obj, Shared):
            raise TypeError("share() of a Shared handle: pass the handle itself")
        handles_exist = True
        self._obj = obj
        self._pickled: tuple[bytes, bytes] | None = None
        self._lock = threading.Lock()

    @property
    def value(self) -> T:
        """The shared object."""
        return self._obj

    def _digest_and_bytes(self) -> tuple[bytes, bytes]:
        with self._lock:  # two threads submitting at once pickle it once
            if self._pickled is None:
                data = dumps(self._obj)
                self._pickled = (blob_digest(data), data)
            return self._pickled

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles as the object itself: itemgetter(0)((obj,)) needs only the standard library
        # on the receiving side, and the object keeps its own fast paths (out-of-band buffers).
        return (operator.itemgetter(0), ((self._obj,),))

    def __repr__(self) -> str:
        kind = f"{type(self._obj).__module__}.{type(self._obj).__qualname__}"
        sent = f", {len(self._pickled[1]):,} bytes pickled" if self._pickled else ""
        return f"<Shared {kind}{sent}>"


def share(obj: T) -> Shared[T]:
    """Wrap *obj*, built once and used by many calls, so REMOTE sends it once per host.

    Pass the handle wherever the object would go, as a top-level argument::

        weights = share(big_array)
        results = [predict(weights, x) for x in xs]   # predict receives big_array

    Under THREAD the function receives the object itself, under PROCESS a copy through the
    usual (shared-memory) path; under REMOTE each host receives it once and keeps it in a
    bounded cache (``blob_cache_bytes`` in the pool file), slots receive it as a read-only
    object (numpy arrays are marked read-only).
    """
    return Shared(obj)


def pickled_shared(handle: Shared[Any]) -> tuple[bytes, bytes]:
    """``(digest, pickled bytes)`` of a handle's object, computed once per handle."""
    return handle._digest_and_bytes()


def unwrap_shared(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Top-level handles replaced by their objects (for executors that do not pickle)."""
    # on THREAD's hot path: a plain loop, no generator, and nothing built when no handle
    for value in args:
        if isinstance(value, Shared):
            break
    else:
        if not kwargs:
            return args, kwargs
        for value in kwargs.values():
            if isinstance(value, Shared):
                break
        else:
            return args, kwargs
    return (
        tuple(v._obj if isinstance(v, Shared) else v for v in args),
        {k: (v._obj if isinstance(v, Shared) else v) for k, v in kwargs.items()},
    )
