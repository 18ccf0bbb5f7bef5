"""Large arguments as content-addressed objects ("blobs"), sent once per host.

The controller's side (the agent's is the "blobs" section of ``worker.py``; the frames are
at the end of ``_wire.py``):

- :func:`prepare_args`, in the submitting thread: every top-level argument that is a
  :func:`parallelize.share` handle, or whose pickled size reaches the *blob threshold*
  (``blob_threshold`` in the pool file's ``[executor]`` table, ``PARALLELIZE_BLOB_THRESHOLD``
  or ``RemoteExecutor(blob_threshold=...)``; default 1 MiB, 0 turns the automatic part off),
  is pickled on its own into a :class:`Blob` (its SHA-256 digest and bytes) and replaced in
  the call's pickled arguments by a :class:`BlobRef`, a few dozen bytes that unpickle *on the
  slot* as the object. Each distinct object is pickled once per submit (a handle: once per
  handle, ever) and its bytes are shared by every host and attempt, and by every call in
  flight whose argument pickles to the same bytes (a registry of live blobs by digest), so
  one pickled copy is held however many pending calls use an object; they live as long as the
  call's bundle (retries may need them on another host) and the link queues that still have
  to write them, no longer. The pickled arguments travel as :class:`BlobArgs`, bytes that
  also name their blobs, so the scheduler and the link contract are unchanged.
- Each link keeps a :class:`BlobLRU` mirroring its agent's blob cache. Before a SUBMIT that
  refers to blobs, the link queues, in order on its one writer queue: BLOB_DROP for the
  digests its LRU evicts, one BLOB per blob the agent lacks, then BLOB_USE and the SUBMIT.

Lockstep, not MISSING-and-retry: like the function cache (``_fn_lru``), the agent keeps
exactly the blobs it is sent and drops exactly the ones it is told to, so the controller
always knows what a host has and never needs a round trip to find out. A lost cache is a
lost agent: a restarted agent comes with a new link whose LRU starts empty, so the first
call that needs a blob there sends it again; an entry evicted by the LRU is simply absent
from it and sent with the next call that needs it. The cache is bounded by
``blob_cache_bytes`` (per host, default 2 GiB); the blobs of one SUBMIT are never evicted
for each other, so one call whose blobs exceed the bound still runs (they stay cached,
alone, until the next call).

Compression (``compression = "auto" | "zstd" | "none"``, per host or in ``[executor]``):
with ``zstandard`` installed on the controller, a blob is compressed once, in the submitting
thread, when a sample of it shrinks by at least :data:`MIN_RATIO` (random floats: about
1.07, not worth it; zeros: thousands), and a link sends the compressed form to agents whose
HELLO reported zstandard. ``"zstd"`` makes zstandard mandatory on that host (the link fails
to connect otherwise, naming the fix); ``"none"`` never compresses.
"""

from __future__ import annotations

import importlib
import operator
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from parallelize import PicklingError, Shared
from parallelize.ext import blob_digest, callable_name, dumps_args, dumps_value, pickled_shared

from . import _wire
from ._errors import HostErrorKind, HostUnavailableError
from ._link import HostSpec

__all__ = [
    "COMPRESSION_MODES",
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_THRESHOLD",
    "ENV_THRESHOLD",
    "MIN_RATIO",
    "Blob",
    "BlobArgs",
    "BlobLRU",
    "BlobRef",
    "blob_frames",
    "blobs_of",
    "check_cache_bytes",
    "check_compression",
    "check_threshold",
    "negotiate_compression",
    "prepare_args",
    "resolve_threshold",
    "zstd_version",
]

DEFAULT_THRESHOLD = 1 << 20
DEFAULT_CACHE_BYTES = 2 << 30
ENV_THRESHOLD = "PARALLELIZE_BLOB_THRESHOLD"
COMPRESSION_MODES = ("auto", "zstd", "none")
MIN_RATIO = 1.3  # compress only what shrinks at least this much
_SAMPLE = 256 << 10  # bytes compressed to decide
_LEVEL = 1  # zstd's fastest level: the point is to beat the link, not to win on ratio
_MAX_BLOB = 0xFFFFFFFF - 64


# -- settings -------------------------------------------------------------------------------


def check_threshold(value: object, where: str) -> int:
    """A blob threshold in bytes (0: only share() handles become blobs), or ValueError."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{where}: blob_threshold must be a whole number of bytes >= 0 (0 turns automatic "
            f"blobs off), got {value!r}"
        )
    return value


def check_cache_bytes(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 << 20):
        raise ValueError(
            f"{where}: blob_cache_bytes must be a whole number of bytes of at least 1 MiB "
            f"(1048576), got {value!r}"
        )
    return value


def check_compression(value: object, where: str) -> str:
    if value not in COMPRESSION_MODES:
        raise ValueError(
            f"{where}: compression must be one of "
            f"{', '.join(repr(m) for m in COMPRESSION_MODES)}, got {value!r}"
        )
    if value == "zstd" and zstd_version() is None:
        raise ValueError(
            f"{where}: compression = 'zstd' needs the zstandard package on the controller, "
            "which is not installed. Fix: pip install 'parallelize[compress]' (or set "
            "compression = 'auto', which compresses only where zstandard is available)"
        )
    return str(value)


def resolve_threshold(explicit: int | None, from_pool: int | None) -> int:
    """The argument, else the environment, else the pool file, else the default."""
    if explicit is not None:
        return check_threshold(explicit, "RemoteExecutor(blob_threshold=...)")
    env = os.environ.get(ENV_THRESHOLD)
    if env is not None and env.strip():
        return check_threshold(env, f"environment variable {ENV_THRESHOLD}={env!r}")
    return DEFAULT_THRESHOLD if from_pool is None else from_pool


def zstd_version() -> str | None:
    try:
        import zstandard
    except ImportError:
        return None
    return str(getattr(zstandard, "__version__", "unknown"))


# -- blobs and references -------------------------------------------------------------------


class Blob:
    """One pickled object: its digest, its bytes and, when worth it, a compressed copy."""

    __slots__ = ("__weakref__", "data", "digest", "zstd")

    def __init__(self, digest: bytes, data: bytes) -> None:
        self.digest = digest
        self.data = data
        self.zstd: bytes | None = None

    def compress(self) -> None:
        """Keep a zstd copy if a sample shows it pays (call once, in the submitting thread)."""
        import zstandard

        data = self.data
        compressor = zstandard.ZstdCompressor(level=_LEVEL)
        middle = max(0, len(data) // 2 - _SAMPLE // 2)
        sample = data[middle : middle + _SAMPLE]
        if len(sample) < MIN_RATIO * len(compressor.compress(sample)):
            return
        packed = compressor.compress(data)
        if len(data) >= MIN_RATIO * len(packed):
            self.zstd = packed

    def __repr__(self) -> str:
        return f"<Blob {self.digest[:6].hex()} {len(self.data):,} bytes>"


class BlobArgs(bytes):
    """Pickled arguments that refer to blobs (:attr:`blobs`), which must reach the host first."""

    blobs: tuple[Blob, ...]


class _AgentModule:
    """Pickles as the agent's module, where the slot keeps the blobs it received."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (importlib.import_module, ("parallelize_agent",))


class BlobRef:
    """Stands for a blob in pickled arguments: unpickles, on the slot, as the blob's object."""

    __slots__ = ("digest",)

    def __init__(self, digest: bytes) -> None:
        self.digest = digest

    def __reduce__(self) -> tuple[Any, ...]:
        return (operator.methodcaller("resolve_blob", self.digest), (_AgentModule(),))


# Every blob some pending call still holds, by digest: a call whose argument pickles to the
# bytes of a live blob shares that blob, so the controller keeps one pickled copy of an
# object however many calls in flight use it (the bytes go when the last of them is done).
_live: weakref.WeakValueDictionary[bytes, Blob] = weakref.WeakValueDictionary()
_live_lock = threading.Lock()


def _shared_blob(digest: bytes, data: bytes, compress: bool) -> Blob:
    with _live_lock:
        blob = _live.get(digest)
    if blob is None:
        fresh = Blob(digest, data)
        if compress:
            fresh.compress()
        with _live_lock:
            blob = _live.setdefault(digest, fresh)
    return blob


# Blobs of share() handles, made once per handle (compression included).
_handle_blobs: weakref.WeakKeyDictionary[Shared[Any], Blob] = weakref.WeakKeyDictionary()
_handle_lock = threading.Lock()


def _handle_blob(handle: Shared[Any], compress: bool) -> Blob:
    with _handle_lock:
        blob = _handle_blobs.get(handle)
    if blob is None:
        blob = _shared_blob(*pickled_shared(handle), compress)
        with _handle_lock:
            blob = _handle_blobs.setdefault(handle, blob)
    return blob


def _rough_size(value: object) -> int:
    """A cheap lower estimate of the pickled size (0 when unknown)."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    nbytes = getattr(value, "nbytes", None)  # numpy arrays, pandas Series, ...
    return nbytes if isinstance(nbytes, int) and not isinstance(nbytes, bool) else 0


def prepare_args(
    target: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    threshold: int,
    *,
    compress: bool,
) -> bytes:
    """The pickled ``(args, kwargs)``: a :class:`BlobArgs` when some of them became blobs."""
    blobs: dict[bytes, Blob] = {}
    by_id: dict[int, Any] = {}  # id(value) -> its replacement: one pickling per object

    def replace(value: Any, force: bool) -> Any:
        if isinstance(value, Shared):
            blob = _handle_blob(value, compress)
        elif isinstance(value, BlobRef) or not threshold:
            return value
        elif id(value) in by_id:
            return by_id[id(value)]
        elif not force and _rough_size(value) < threshold:
            return value
        else:
            try:
                data = dumps_value(value)
            except Exception:
                return value  # dumps_args names the culprit
            if len(data) < threshold:
                by_id[id(value)] = value
                return value
            blob = _shared_blob(blob_digest(data), data, compress)
            del data  # a live blob of the same bytes is kept instead
        if len(blob.data) > _MAX_BLOB:
            raise PicklingError(
                f"cannot send call to {callable_name(target)}: an argument takes "
                f"{len(blob.data):,} bytes pickled, more than one REMOTE frame carries "
                f"({_MAX_BLOB:,}). Fix: pass a path and load the data on the host."
            )
        blobs.setdefault(blob.digest, blob)
        ref = BlobRef(blob.digest)
        by_id[id(value)] = ref
        return ref

    new_args = tuple(replace(v, False) for v in args)
    new_kwargs = {k: replace(v, False) for k, v in kwargs.items()}
    payload = dumps_args(target, new_args, new_kwargs)
    if threshold and len(payload) > threshold:
        # Something without a cheap size estimate (a list, a DataFrame, ...) is large.
        by_id = {key: v for key, v in by_id.items() if isinstance(v, BlobRef)}
        new_args = tuple(replace(v, True) for v in new_args)
        new_kwargs = {k: replace(v, True) for k, v in new_kwargs.items()}
        payload = dumps_args(target, new_args, new_kwargs)
    if not blobs:
        return payload
    out = BlobArgs(payload)
    out.blobs = tuple(blobs.values())
    return out


def blobs_of(payload: bytes) -> tuple[Blob, ...]:
    return payload.blobs if isinstance(payload, BlobArgs) else ()


# -- the link's mirror of its agent's cache ---------------------------------------------------


class BlobLRU:
    """Digests the agent holds, with their sizes, least recently used first.

    ``use(blobs)`` records that a SUBMIT refers to *blobs* and returns ``(send, evicted)``:
    the blobs the agent lacks (to send before the SUBMIT) and the digests it must drop
    first. Pure bookkeeping; the link calls it under its write lock."""

    __slots__ = ("_entries", "_total", "max_bytes")

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"BlobLRU needs a positive bound, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, int] = OrderedDict()
        self._total = 0

    def use(self, blobs: Iterable[Blob]) -> tuple[list[Blob], list[bytes]]:
        entries = self._entries
        send: list[Blob] = []
        pinned: set[bytes] = set()
        for blob in blobs:
            pinned.add(blob.digest)
            if blob.digest in entries:
                entries.move_to_end(blob.digest)
            else:
                entries[blob.digest] = len(blob.data)
                self._total += len(blob.data)
                send.append(blob)
        evicted: list[bytes] = []
        for digest in list(entries):
            if self._total <= self.max_bytes:
                break
            if digest not in pinned:
                self._total -= entries.pop(digest)
                evicted.append(digest)
        return send, evicted

    def __contains__(self, digest: object) -> bool:
        return digest in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        return self._total


def blob_frames(
    attempt_id: int, blobs: Sequence[Blob], lru: BlobLRU, zstd: bool
) -> tuple[list[tuple[bytes, bytes | None]], bytes]:
    """The frames a link queues for a SUBMIT that refers to *blobs*: ``(parts, prefix)``.

    *parts*: BLOB_DROP and BLOB frames as ``(head, data)`` pairs written one after the
    other (``data`` is the blob's own bytes object, never copied); *prefix*: the BLOB_USE
    frame to put right before the SUBMIT (in the same queued item, so a SUBMIT dropped by
    a cancel takes it along)."""
    send, evicted = lru.use(blobs)
    parts: list[tuple[bytes, bytes | None]] = []
    if evicted:
        parts.append((_wire.encode_blob_drop(evicted), None))
    for blob in send:
        if zstd and blob.zstd is not None:
            codec, data = _wire.BLOB_ZSTD, blob.zstd
        else:
            codec, data = _wire.BLOB_RAW, blob.data
        parts.append((_wire.encode_blob_head(blob.digest, codec, len(blob.data), len(data)), data))
    return parts, _wire.encode_blob_use(attempt_id, [b.digest for b in blobs])


def negotiate_compression(spec: HostSpec, hello: dict[str, Any]) -> bool:
    """Whether a link may send this agent zstd-compressed blobs (after its HELLO).

    ``"zstd"`` on a host without zstandard fails the connection, naming the fix."""
    mode = spec.compression
    if mode == "zstd" and zstd_version() is None:  # a HostSpec made without the pool file
        raise HostUnavailableError(
            f"host {spec.name!r}: compression = 'zstd' needs the zstandard package on the "
            "controller. Fix: pip install 'parallelize[compress]', or use compression = 'auto'.",
            kind=HostErrorKind.VERSION,
            host=spec.name,
        )
    if mode == "none" or zstd_version() is None:
        return False
    if hello.get("zstd"):
        return True
    if mode == "zstd":
        raise HostUnavailableError(
            f"host {spec.name!r} ({spec.host}): compression = 'zstd' is set for it but its "
            f"Python ({hello.get('executable') or spec.python}) cannot import zstandard. Fix: "
            f"`{spec.python} -m pip install zstandard` there, or set compression = 'auto' "
            "(compress only where available) for this host in the pool file.",
            kind=HostErrorKind.VERSION,
            host=spec.name,
        )
    return False
