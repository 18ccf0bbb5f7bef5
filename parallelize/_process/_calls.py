"""Pickling a call's arguments in the caller's thread (no pool state, no lock).

Arguments of a few exact types pickle identically with plain pickle, which is
several times faster than cloudpickle for a small call; large buffers go to a
shared-memory segment (see ``_shm``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable
from typing import Any

from .._pickling import SIMPLE_TYPES, dumps_args, dumps_function, dumps_with_buffer_callback
from . import _shm

__all__ = ["PickledCall", "dumps_call", "pickle_call"]

_EMPTY_CALL = pickle.dumps(((), {}), protocol=5)
_NEVER = 1 << 62  # a size no buffer has: the threshold when shared memory is off


def dumps_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    shm_threshold: int | None,
) -> tuple[bytes, _shm.Segment | None]:
    if not args and not kwargs:
        return _EMPTY_CALL, None
    simple = SIMPLE_TYPES
    big = _NEVER if shm_threshold is None else shm_threshold
    for value in args:
        tp = type(value)
        if tp not in simple or (tp is bytes and len(value) >= big):
            break
    else:
        for value in kwargs.values():
            tp = type(value)
            if tp not in simple or (tp is bytes and len(value) >= big):
                break
        else:
            return pickle.dumps((args, kwargs), protocol=5), None
    if shm_threshold is None:
        return dumps_args(fn, args, kwargs), None
    call: Any = (args, kwargs)
    if _has_big_bytes(args, big) or _has_big_bytes(kwargs.values(), big):
        wrap = _shm.wrap_top_level
        call = (
            tuple(wrap(value, big) for value in args),
            {key: wrap(value, big) for key, value in kwargs.items()},
        )
    try:
        return _shm.dumps_with_buffers(
            (dumps_with_buffer_callback,), call, big, f"parallelize:{os.getpid()}:args"
        )
    except OSError:
        # No descriptor (many queued calls: one segment each) or memory left for a
        # segment: this call goes through the pipe. (A pickling error raises below.)
        return dumps_args(fn, args, kwargs), None
    except Exception:
        dumps_args(fn, args, kwargs)  # raises a PicklingError that names the argument
        raise


def _has_big_bytes(values: Iterable[Any], threshold: int) -> bool:
    for value in values:
        tp = type(value)
        if (tp is bytes or tp is bytearray) and len(value) >= threshold:
            return True
    return False


class PickledCall:
    """A call pickled once, the PROCESS way, that may be run more than once.

    The shared API behind REMOTE's embedded pool (``parallelize.ext``): REMOTE pickles
    a call at submit (so an unpicklable argument fails there) and may start it again
    after a lost attempt or as a backup. Each run gets its own descriptor of the
    shared-memory segment (``ProcessExecutor.submit_pickled``), so the buffers are
    written once and freed when the last run is over and :meth:`close` was called.
    """

    __slots__ = ("args_bytes", "fn", "fn_bytes", "segment")

    def __init__(
        self,
        fn: Callable[..., Any],
        fn_bytes: bytes,
        args_bytes: bytes,
        segment: _shm.Segment | None,
    ) -> None:
        self.fn = fn
        self.fn_bytes = fn_bytes
        self.args_bytes = args_bytes
        self.segment = segment

    @property
    def nbytes(self) -> int:
        """Bytes of the pickled call, shared-memory buffers included."""
        extra = self.segment.nbytes if self.segment is not None else 0
        return len(self.fn_bytes) + len(self.args_bytes) + extra

    def segment_for_run(self) -> _shm.Segment | None:
        """A segment owning a new descriptor of this call's buffers (closed by its run)."""
        segment = self.segment
        if segment is None or segment.fd < 0:
            return None
        return _shm.Segment(os.dup(segment.fd), segment.layout, segment.nbytes)

    def close(self) -> None:
        """Release this call's own descriptor (runs still queued keep theirs)."""
        segment, self.segment = self.segment, None
        if segment is not None:
            segment.close()


def pickle_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    shm_threshold: int | None,
) -> PickledCall:
    """Pickle *fn* and its arguments for a PROCESS worker (raises PicklingError here)."""
    fn_bytes = dumps_function(fn)
    args_bytes, segment = dumps_call(fn, args, kwargs, shm_threshold)
    return PickledCall(fn, fn_bytes, args_bytes, segment)
