"""Large buffers between a :class:`ProcessExecutor` and its workers, through shared memory.

Calls and results are pickled with protocol 5. Every buffer that pickle hands
out of band (a ``pickle.PickleBuffer``: the data of a contiguous numpy array,
and of anything else that implements protocol 5, e.g. pandas' blocks) that is at
least *threshold* bytes long is not put in the pickle: the buffers of one call
(or one result) are written into one anonymous shared-memory file and the
pickle only says where each one starts. Top-level ``bytes`` and ``bytearray``
arguments or results at least *threshold* long travel the same way (pickle
never offers them out of band, so they are wrapped; they arrive as ``bytes`` /
``bytearray`` again, which is one copy on the receiving side).

Why memfd and fd passing, not ``/dev/shm`` names
------------------------------------------------
A segment is a ``memfd_create`` file: it has no name anywhere in the file
system, and the kernel frees it when the last descriptor and the last mapping
of it are gone. The descriptor goes to the other process over a Unix socket
(``SCM_RIGHTS``) that runs next to the task and result pipes, one message per
batch of tasks or per result, in the same order as the frames that refer to
them. A descriptor in flight is owned by the socket, so whoever dies -- the
worker mid-call, the parent mid-submit, both, even by SIGKILL -- the kernel
drops it with the socket. Named segments (``multiprocessing.shared_memory``)
would need someone alive to unlink them, and a resource tracker for the case
where nobody is. Cost: one copy into the segment on the sending side (the
pickle data goes straight from the array to the file with ``pwrite``), none on
the receiving side (it maps the file).

Lifetimes
---------
* Arguments: the parent's segment (``Segment``) belongs to the task and is
  closed when the task completes, fails or is cancelled (a task re-queued after
  its worker died is sent again with the same segment). The worker maps it
  read-only and closes its descriptor at once; the mapping lives as long as the
  arguments do (normally until the call returns).
* Results: the worker writes the segment, sends the descriptor and closes it.
  The parent maps it copy-on-write: the result is writable (writes go to
  private pages), and the memory is freed when the result is garbage
  collected. An array that was read-only in the worker (say, an argument
  returned as is) stays read-only.
* Mappings are made with ``mmap(2)`` through ctypes, not ``mmap.mmap``, which
  keeps a duplicate descriptor open per mapping (before Python 3.13): live
  results cost no descriptors. A mapping is unmapped when the last view of it
  is garbage collected.
* A segment that cannot be created (no descriptor or memory left) is not an
  error: the caller pickles that call or result in band instead.

Arguments are **read-only** in the worker: writing into one raises numpy's
``ValueError: assignment destination is read-only``. A copy would cost what
the shared memory saves for every call that does not write; ``x = x.copy()``
in the task makes one when it is wanted.

This module is imported by the worker: standard library only, ``socket``
imported on first use (it takes milliseconds to import).
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct

TYPE_CHECKING = False  # not imported from typing: the worker does not need typing at run time
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence
    from typing import Any

__all__ = [
    "AVAILABLE",
    "DEFAULT_THRESHOLD",
    "FdChannel",
    "Segment",
    "decode_layout",
    "dumps_with_buffers",
    "encode_layout",
    "loads_with_segment",
    "wrap_top_level",
]

# memfd_create is Linux (and FreeBSD 13+) only; elsewhere everything is pickled in band.
AVAILABLE = hasattr(os, "memfd_create") and hasattr(os, "pwrite")

# 1 MiB, as joblib's automatic memory-mapping: below this, a buffer costs less in
# the pickle than a segment (a memfd, a descriptor sent, a mapping) costs to set up.
DEFAULT_THRESHOLD = 1 << 20

_ALIGN = mmap.PAGESIZE  # each buffer starts on a page: aligned for any dtype
_MAX_WRITE = 1 << 30  # pwrite writes at most ~2 GiB per call on Linux
_LAYOUT_COUNT = struct.Struct("<I")
_LAYOUT_ITEM = struct.Struct("<QQ")  # offset, length
_MAX_FDS_PER_MESSAGE = 250  # the kernel's SCM_MAX_FD is 253


class Segment:
    """An anonymous shared-memory file holding the large buffers of one call or result.

    Owns its descriptor: ``close`` (or garbage collection) releases it; the
    memory is freed once the receiver's mapping is gone too.
    """

    __slots__ = ("fd", "layout", "nbytes")

    def __init__(self, fd: int, layout: tuple[tuple[int, int], ...], nbytes: int) -> None:
        self.fd = fd
        self.layout = layout
        self.nbytes = nbytes

    @classmethod
    def create(cls, buffers: Sequence[memoryview], name: str) -> Segment:
        layout: list[tuple[int, int]] = []
        end = 0
        for buf in buffers:
            offset = -(-end // _ALIGN) * _ALIGN
            layout.append((offset, buf.nbytes))
            end = offset + buf.nbytes
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, _mapping_size(end))  # the rounded-up tail is never touched
            for (offset, _), buf in zip(layout, buffers, strict=True):
                view = buf.cast("B") if buf.format != "B" or buf.ndim != 1 else buf
                pos = 0
                while pos < view.nbytes:
                    pos += os.pwrite(fd, view[pos : pos + _MAX_WRITE], offset + pos)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, tuple(layout), end)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:  # a task dropped on a path that did not close it
        try:  # noqa: SIM105 - contextlib is not imported in the worker
            self.close()
        except OSError:
            pass


class _OutOfBand:
    """A top-level ``bytes``/``bytearray`` to be sent out of band; unpickles as its type."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (type(self.data), (pickle.PickleBuffer(self.data),))


def wrap_top_level(value: Any, threshold: int) -> Any:
    """*value*, or a wrapper that sends it out of band when it is big ``bytes``/``bytearray``."""
    tp = type(value)
    if (tp is bytes or tp is bytearray) and len(value) >= threshold:
        return _OutOfBand(value)
    return value


def dumps_with_buffers(
    dumpers: Sequence[Callable[..., bytes]], obj: Any, threshold: int, name: str
) -> tuple[bytes, Segment | None]:
    """Pickle *obj* with ``dumper(obj, protocol=5, buffer_callback=...)``, the first of (at
    most two) *dumpers* that works; buffers of at least *threshold* bytes go into a new
    segment (None when there are none). The last dumper's exception propagates."""
    big: list[memoryview] = []

    def keep_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: leave it in the pickle
            return True
        if raw.nbytes < threshold:
            return True
        big.append(raw)
        return False

    try:
        data = dumpers[0](obj, protocol=5, buffer_callback=keep_out_of_band)
    except Exception:
        if len(dumpers) < 2:
            raise
        big.clear()  # what the failed attempt collected
        data = dumpers[1](obj, protocol=5, buffer_callback=keep_out_of_band)
    if not big:
        return data, None
    try:
        return data, Segment.create(big, name)
    finally:
        for raw in big:
            raw.release()


def _mapping_size(nbytes: int) -> int:
    """*nbytes* rounded up to a multiple of 1/16 of its power of two (at least a page), so
    that few distinct sizes are ever mapped: ctypes keeps one array type per size."""
    step = max(_ALIGN, 1 << max(0, nbytes.bit_length() - 4))
    return -(-nbytes // step) * step


class _Mapper:
    """``mmap``/``munmap`` through ctypes: unlike ``mmap.mmap`` (before Python 3.13) a
    mapping does not keep a duplicate of the descriptor open, so thousands of live results
    do not use thousands of descriptors. The mapping is unmapped when the last view of it
    is garbage collected."""

    def __init__(self) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        self.ctypes = ctypes
        self.mmap = libc.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        )
        self.munmap = libc.munmap
        self.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        self.munmap.restype = ctypes.c_int

    def map(self, fd: int, size: int, writable: bool) -> memoryview:
        import weakref

        ctypes = self.ctypes
        if writable:
            prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE
        else:
            prot, flags = mmap.PROT_READ, mmap.MAP_SHARED
        address = self.mmap(None, size, prot, flags, fd, 0)
        if address is None or address == ctypes.c_void_p(-1).value:
            errno = ctypes.get_errno()
            raise OSError(errno, f"cannot map shared memory: {os.strerror(errno)}")
        area = (ctypes.c_ubyte * size).from_address(address)
        weakref.finalize(area, self.munmap, address, size)
        view = memoryview(area).cast("B")
        return view if writable else view.toreadonly()


_mapper: _Mapper | None = None


def _map(fd: int, writable: bool) -> memoryview:
    global _mapper
    if _mapper is None:
        _mapper = _Mapper()
    return _mapper.map(fd, os.fstat(fd).st_size, writable)


def loads_with_segment(
    data: bytes | memoryview, fd: int, layout: Sequence[tuple[int, int]], *, writable: bool
) -> Any:
    """Unpickle *data* whose out-of-band buffers are in the segment *fd* (not closed here).

    ``writable=False`` maps the segment read-only (the buffers are read-only
    views); ``writable=True`` maps it copy-on-write.
    """
    # The views keep the mapping alive (and mapped) as long as some object uses them.
    whole = _map(fd, writable)
    buffers = [whole[offset : offset + length] for offset, length in layout]
    del whole
    return pickle.loads(data, buffers=buffers)


def encode_layout(layout: Sequence[tuple[int, int]]) -> bytes:
    return _LAYOUT_COUNT.pack(len(layout)) + b"".join(
        _LAYOUT_ITEM.pack(offset, length) for offset, length in layout
    )


def decode_layout(data: bytes | memoryview) -> tuple[tuple[tuple[int, int], ...], int]:
    """``(layout, bytes used)`` from the start of *data*."""
    (count,) = _LAYOUT_COUNT.unpack_from(data, 0)
    pos = _LAYOUT_COUNT.size
    items = []
    for _ in range(count):
        items.append(_LAYOUT_ITEM.unpack_from(data, pos))
        pos += _LAYOUT_ITEM.size
    return tuple(items), pos


class FdChannel:
    """One end of the ``SOCK_SEQPACKET`` socket that carries segment descriptors.

    A message is one byte of data and the descriptors of one batch (parent to
    worker) or one result (worker to parent), sent before the frame that
    refers to them, so the receiver reads it after that frame, in order.
    """

    __slots__ = ("_sock",)

    def __init__(self, fd: int) -> None:
        import socket

        self._sock: socket.socket = socket.socket(fileno=fd)

    def send(self, fds: Sequence[int]) -> None:
        import socket

        for start in range(0, len(fds), _MAX_FDS_PER_MESSAGE):
            socket.send_fds(
                self._sock,
                [b"F"],
                list(fds[start : start + _MAX_FDS_PER_MESSAGE]),
                socket.MSG_NOSIGNAL,  # a dead peer is an EPIPE error, even where SIGPIPE kills
            )

    def receive(self, count: int) -> list[int]:
        """*count* descriptors (they were sent before their frame: this does not wait)."""
        import socket

        fds: list[int] = []
        while len(fds) < count:
            want = min(count - len(fds), _MAX_FDS_PER_MESSAGE)
            msg, got, flags, _ = socket.recv_fds(self._sock, 1, want)
            fds.extend(got)
            if not msg or flags & socket.MSG_CTRUNC or not got:
                for fd in fds:
                    os.close(fd)
                raise OSError("shared-memory descriptors were lost between processes")
        return fds

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()
