"""The framed binary protocol between the controller and a worker agent.

Every message is one frame::

    +----------------------+-----------+------------------------+
    | length: uint32 (BE)  | type: u8  | body: length - 1 bytes |
    +----------------------+-----------+------------------------+

``length`` counts the type byte and the body. Bodies start with fixed-size
fields packed with :mod:`struct` (big endian) followed by one variable-size
blob, so encoding and decoding are a single ``pack``/``unpack`` plus slicing.

Controller -> agent: SUBMIT, CANCEL, PING, SHUTDOWN, EVICT, TIME_LIMIT (and BLOB,
BLOB_DROP, BLOB_USE: see the end of this module).
Agent -> controller: HELLO, RESULT, LOST, PONG, OUTPUT, ERROR, TIMED_OUT.
Agent -> slot: SUBMIT, EVICT. Slot -> agent: RESULT, LOST (a slot's LOST
carries attempt id 0: the agent knows which attempt the slot runs).

Before its HELLO the agent writes :data:`MAGIC`; the controller skips (and
reports) anything a noisy remote login shell printed before it.

Frame bodies (every decoder checks the body against its declared parts:
fixed-size frames with trailing bytes, a SUBMIT whose function length does
not fit, an unknown type are :class:`ProtocolError`):

- HELLO: JSON object (python, executable, pid, hostname, platform,
  cloudpickle, error, tmpdir, protocol = :data:`PROTOCOL`).
- SUBMIT: attempt_id u64, fn_id u64, has_fn bool, fn_len u32, then fn_len
  bytes of pickled function (0 unless has_fn), then the pickled arguments.
- CANCEL, PING, PONG: one u64 (attempt id / token). SHUTDOWN: empty.
- RESULT: attempt_id u64, ok bool, duration f64, then the pickled payload.
- RESULT_ZSTD: a RESULT whose payload is one zstd frame (with its content size), sent
  only by an agent told at start that the controller reads them (a large result that
  shrinks enough, over a link where compression pays; see ``worker.py``).
- LOST: attempt_id u64, then a UTF-8 reason.
- EVICT: n x u64 function ids the receiver must drop from its cache.
- OUTPUT: stream u8 (:data:`STDOUT`), then bytes a task wrote to that stream.
- ERROR: a UTF-8 message naming a frame the agent rejected; the agent then
  exits with a non-zero status.
- TIME_LIMIT: attempt_id u64, seconds f64: sent right before that attempt's
  SUBMIT (in the same write) when the call has a ``timeout``. The agent starts
  the clock when a slot starts the attempt; on expiry it kills the slot's
  process group, replaces the slot and answers TIMED_OUT instead of a RESULT.
- TIMED_OUT: attempt_id u64, seconds the attempt ran f64 (no RESULT or LOST
  follows for it). Numbered apart from the others (20, 21) so that frame kinds
  added elsewhere do not collide.

Function caches (lockstep): the controller's link keeps an LRU of the
functions it has sent (:mod:`remote._fn_lru`, bounded by
:data:`FN_CACHE_MAX_COUNT` functions and :data:`FN_CACHE_MAX_BYTES` bytes).
When a SUBMIT makes it evict ids, the link sends one EVICT frame with them
right before that SUBMIT. The agent caches exactly what it is sent and drops
exactly what it is told: it never evicts on its own, so a SUBMIT without a
function the agent lacks (or an EVICT of an id it does not have, or a cache
above the limits) means the two sides are out of step: a protocol error.
The agent forwards evictions to each slot holding an evicted function,
as an EVICT frame before that slot's next SUBMIT.

This module is shipped to remote hosts with the agent (see ``worker.py``):
it must import nothing but the standard library.

Why one module of more than 400 lines: it is the protocol's specification and
its only implementation, read side by side (each frame's layout above, its
encoder and decoder below), and it travels to hosts as one source file that
``_agent_boot`` sends by name. Split, the two sides of a frame would live
apart and the shipping would need a second file kept in step.
"""

from __future__ import annotations

import json
import struct
from typing import Any

__all__ = [
    "BLOB",
    "BLOB_DROP",
    "BLOB_RAW",
    "BLOB_USE",
    "BLOB_ZSTD",
    "CANCEL",
    "DIGEST_SIZE",
    "ERROR",
    "EVICT",
    "FN_CACHE_MAX_BYTES",
    "FN_CACHE_MAX_COUNT",
    "HEADER",
    "HELLO",
    "LOST",
    "MAGIC",
    "OUTPUT",
    "PING",
    "PONG",
    "PROTOCOL",
    "RESULT",
    "RESULT_ZSTD",
    "SHUTDOWN",
    "STDOUT",
    "SUBMIT",
    "TIMED_OUT",
    "TIME_LIMIT",
    "FrameBuffer",
    "ProtocolError",
    "decode_blob",
    "decode_blob_drop",
    "decode_blob_use",
    "decode_cancel",
    "decode_error",
    "decode_evict",
    "decode_hello",
    "decode_lost",
    "decode_output",
    "decode_ping",
    "decode_result",
    "decode_shutdown",
    "decode_submit",
    "decode_time_limit",
    "decode_timed_out",
    "encode_blob_drop",
    "encode_blob_head",
    "encode_blob_use",
    "encode_cancel",
    "encode_error",
    "encode_evict",
    "encode_hello",
    "encode_lost",
    "encode_output",
    "encode_ping",
    "encode_pong",
    "encode_result",
    "encode_shutdown",
    "encode_submit",
    "encode_time_limit",
    "encode_timed_out",
    "message_name",
]

HELLO = 1
SUBMIT = 2
CANCEL = 3
RESULT = 4
LOST = 5
PING = 6
PONG = 7
SHUTDOWN = 8
EVICT = 9
OUTPUT = 10
ERROR = 11
TIME_LIMIT = 20  # per-call timeouts: see the module docstring
TIMED_OUT = 21
RESULT_ZSTD = 22  # a RESULT whose payload is zstd-compressed (see the module docstring)

_NAMES = {
    HELLO: "HELLO",
    SUBMIT: "SUBMIT",
    CANCEL: "CANCEL",
    RESULT: "RESULT",
    LOST: "LOST",
    PING: "PING",
    PONG: "PONG",
    SHUTDOWN: "SHUTDOWN",
    EVICT: "EVICT",
    OUTPUT: "OUTPUT",
    ERROR: "ERROR",
    TIME_LIMIT: "TIME_LIMIT",
    TIMED_OUT: "TIMED_OUT",
    RESULT_ZSTD: "RESULT_ZSTD",
}

# Written by the agent right before its HELLO: whatever precedes it was printed by the
# remote login shell. NUL bytes keep it from appearing in ordinary text.
MAGIC = b"\x00\x00parallelize-agent\x00v1\x00"

# Reported in HELLO; the controller refuses an agent that speaks another version (one run
# by hand from an older checkout: links always ship the controller's own agent source).
PROTOCOL = 3  # 3: failures in the outcome codec shared with PROCESS (parallelize._outcome)

STDOUT = 1  # OUTPUT stream id: what tasks wrote to their standard output

# Bounds of the function caches (the link's LRU, mirrored by the agent and its slots). One
# function larger than FN_CACHE_MAX_BYTES is still cached, alone.
FN_CACHE_MAX_COUNT = 256
FN_CACHE_MAX_BYTES = 64 << 20

HEADER = struct.Struct(">IB")  # length (type byte + body), type

_SUBMIT = struct.Struct(">IBQQ?I")  # header, attempt_id, fn_id, has_fn, fn length
_RESULT = struct.Struct(">IBQ?d")  # header, attempt_id, ok, duration
_ID = struct.Struct(">IBQ")  # header, attempt_id / token
_OUTPUT = struct.Struct(">IBB")  # header, stream
_ID_SECONDS = struct.Struct(">IBQd")  # header, attempt_id, seconds


class ProtocolError(Exception):
    """A frame could not be decoded: the peer is not an agent of this version."""


def message_name(kind: int) -> str:
    return _NAMES.get(kind, f"unknown({kind})")


def _check_len(length: int) -> int:
    if length > 0xFFFFFFFF:
        raise ProtocolError(f"message of {length} bytes is too large for one frame (max 4 GiB)")
    return length


# -- encoders (return complete frames) ---------------------------------------------------


def encode_hello(info: dict[str, Any]) -> bytes:
    body = json.dumps(info).encode()
    return HEADER.pack(1 + len(body), HELLO) + body


def encode_submit(attempt_id: int, fn_id: int, fn_payload: bytes | None, args: bytes) -> bytes:
    fn = fn_payload or b""
    size = _check_len(_SUBMIT.size - 4 + len(fn) + len(args))
    head = _SUBMIT.pack(size, SUBMIT, attempt_id, fn_id, fn_payload is not None, len(fn))
    return b"".join((head, fn, args))


def encode_cancel(attempt_id: int) -> bytes:
    return _ID.pack(_ID.size - 4, CANCEL, attempt_id)


def encode_result(
    attempt_id: int, ok: bool, payload: bytes, duration: float, *, zstd: bool = False
) -> bytes:
    size = _check_len(_RESULT.size - 4 + len(payload))
    kind = RESULT_ZSTD if zstd else RESULT
    return _RESULT.pack(size, kind, attempt_id, ok, duration) + payload


def encode_lost(attempt_id: int, reason: str) -> bytes:
    body = reason.encode("utf-8", "replace")
    return _ID.pack(_ID.size - 4 + len(body), LOST, attempt_id) + body


def encode_ping(token: int) -> bytes:
    return _ID.pack(_ID.size - 4, PING, token)


def encode_pong(token: int) -> bytes:
    return _ID.pack(_ID.size - 4, PONG, token)


def encode_shutdown() -> bytes:
    return HEADER.pack(1, SHUTDOWN)


def encode_evict(fn_ids: list[int]) -> bytes:
    body = struct.pack(f">{len(fn_ids)}Q", *fn_ids)
    return HEADER.pack(_check_len(1 + len(body)), EVICT) + body


def encode_output(stream: int, data: bytes) -> bytes:
    return _OUTPUT.pack(_check_len(_OUTPUT.size - 4 + len(data)), OUTPUT, stream) + data


def encode_time_limit(attempt_id: int, seconds: float) -> bytes:
    return _ID_SECONDS.pack(_ID_SECONDS.size - 4, TIME_LIMIT, attempt_id, seconds)


def encode_timed_out(attempt_id: int, ran: float) -> bytes:
    return _ID_SECONDS.pack(_ID_SECONDS.size - 4, TIMED_OUT, attempt_id, ran)


def encode_error(message: str) -> bytes:
    body = message.encode("utf-8", "replace")
    return HEADER.pack(1 + len(body), ERROR) + body


# -- decoders (take the body: the frame without its 5-byte header) ------------------------

_SUBMIT_BODY = struct.Struct(">QQ?I")
_RESULT_BODY = struct.Struct(">Q?d")
_ID_BODY = struct.Struct(">Q")


def decode_hello(body: bytes) -> dict[str, Any]:
    try:
        info = json.loads(body.decode())
    except ValueError as exc:
        raise ProtocolError(f"malformed HELLO: {exc}") from None
    if not isinstance(info, dict):
        raise ProtocolError("malformed HELLO: not an object")
    return info


def decode_submit(body: bytes) -> tuple[int, int, bytes | None, bytes]:
    """-> (attempt_id, fn_id, fn_payload or None, args_payload)"""
    if len(body) < _SUBMIT_BODY.size:
        raise ProtocolError(
            f"malformed SUBMIT: {len(body)} bytes, shorter than its "
            f"{_SUBMIT_BODY.size}-byte fixed part"
        )
    attempt_id, fn_id, has_fn, fn_len = _SUBMIT_BODY.unpack_from(body)
    start = _SUBMIT_BODY.size
    if not has_fn and fn_len:
        raise ProtocolError(
            f"malformed SUBMIT of attempt {attempt_id}: no function but a function length "
            f"of {fn_len}"
        )
    if fn_len > len(body) - start:
        raise ProtocolError(
            f"malformed SUBMIT of attempt {attempt_id}: declares a function of {fn_len} bytes "
            f"but only {len(body) - start} bytes follow its fixed part"
        )
    if len(body) == start + fn_len:
        raise ProtocolError(f"malformed SUBMIT of attempt {attempt_id}: no argument payload")
    fn = body[start : start + fn_len] if has_fn else None
    return attempt_id, fn_id, fn, body[start + fn_len :]


def decode_result(body: bytes) -> tuple[int, bool, bytes, float]:
    """-> (attempt_id, ok, payload, duration)"""
    try:
        attempt_id, ok, duration = _RESULT_BODY.unpack_from(body)
    except struct.error as exc:
        raise ProtocolError(f"malformed RESULT: {exc}") from None
    return attempt_id, ok, body[_RESULT_BODY.size :], duration


def decode_lost(body: bytes) -> tuple[int, str]:
    try:
        (attempt_id,) = _ID_BODY.unpack_from(body)
    except struct.error as exc:
        raise ProtocolError(f"malformed LOST: {exc}") from None
    return attempt_id, body[_ID_BODY.size :].decode("utf-8", "replace")


def decode_cancel(body: bytes) -> int:
    return _decode_id(body, "CANCEL")


def decode_ping(body: bytes) -> int:
    """Decode a PING or PONG body -> token."""
    return _decode_id(body, "PING")


def decode_shutdown(body: bytes) -> None:
    if body:
        raise ProtocolError(f"malformed SHUTDOWN: {len(body)} unexpected bytes (expected none)")


def decode_evict(body: bytes) -> list[int]:
    if len(body) % 8:
        raise ProtocolError(f"malformed EVICT: {len(body)} bytes is not a multiple of 8")
    return list(struct.unpack(f">{len(body) // 8}Q", body))


def decode_output(body: bytes) -> tuple[int, bytes]:
    """-> (stream, data)"""
    if not body:
        raise ProtocolError("malformed OUTPUT: no stream id")
    return body[0], body[1:]


def decode_time_limit(body: bytes) -> tuple[int, float]:
    """-> (attempt_id, seconds > 0)"""
    attempt_id, seconds = _decode_id_seconds(body, "TIME_LIMIT")
    if not seconds > 0 or seconds == float("inf"):
        raise ProtocolError(f"malformed TIME_LIMIT of attempt {attempt_id}: {seconds!r} seconds")
    return attempt_id, seconds


def decode_timed_out(body: bytes) -> tuple[int, float]:
    """-> (attempt_id, seconds the attempt ran)"""
    return _decode_id_seconds(body, "TIMED_OUT")


def _decode_id_seconds(body: bytes, what: str) -> tuple[int, float]:
    size = _ID_SECONDS.size - 5
    if len(body) != size:
        raise ProtocolError(f"malformed {what}: {len(body)} bytes (expected exactly {size})")
    attempt_id, seconds = struct.unpack(">Qd", body)
    return int(attempt_id), float(seconds)


def decode_error(body: bytes) -> str:
    return body.decode("utf-8", "replace")


def _decode_id(body: bytes, what: str) -> int:
    if len(body) != _ID_BODY.size:
        raise ProtocolError(
            f"malformed {what}: {len(body)} bytes (expected exactly {_ID_BODY.size})"
        )
    (value,) = _ID_BODY.unpack(body)
    return int(value)


class FrameBuffer:
    """Accumulates received bytes and yields complete frames as ``(type, body)``."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        frames: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 5:
            length, kind = HEADER.unpack_from(buf, pos)
            if length < 1:
                raise ProtocolError("malformed frame: zero length")
            stop = pos + 4 + length
            if stop > end:
                break
            with memoryview(buf) as view:  # one copy of a large body, not two
                frames.append((kind, bytes(view[pos + 5 : stop])))
            pos = stop
        if pos:
            del buf[:pos]
        return frames

    def pending(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buf)


# -- content-addressed objects ("blobs", see remote/_blobs.py) ------------------------------
#
# Controller -> agent, and agent -> slot:
# - BLOB: digest (32 bytes, SHA-256 of the raw bytes), codec u8 (BLOB_RAW, or BLOB_ZSTD only
#   when the agent's HELLO reported zstandard), raw length u64, then the data (raw or
#   compressed). The receiver keeps it under its digest. Agents pass slots raw data only.
# - BLOB_DROP: n x 32-byte digests the receiver must drop.
# - BLOB_USE: attempt_id u64, then n x 32-byte digests the SUBMIT of that attempt (the next
#   frame) refers to; the agent hands them to the slot that runs it.
# Kind numbers start at 32, away from the core kinds above.
BLOB = 32
BLOB_DROP = 33
BLOB_USE = 34
BLOB_RAW = 0
BLOB_ZSTD = 1
DIGEST_SIZE = 32
_NAMES.update({BLOB: "BLOB", BLOB_DROP: "BLOB_DROP", BLOB_USE: "BLOB_USE"})
_BLOB = struct.Struct(">IB32sBQ")  # header, digest, codec, raw length
_BLOB_BODY = struct.Struct(">32sBQ")


def encode_blob_head(digest: bytes, codec: int, raw_len: int, data_len: int) -> bytes:
    """The start of a BLOB frame; the *data_len* bytes of data follow it on the stream (kept
    apart so that a large object is never copied into a frame)."""
    if len(digest) != DIGEST_SIZE:
        raise ProtocolError(f"a blob digest has {DIGEST_SIZE} bytes, not {len(digest)}")
    return _BLOB.pack(_check_len(_BLOB.size - 4 + data_len), BLOB, digest, codec, raw_len)


def decode_blob(body: bytes) -> tuple[bytes, int, int, memoryview]:
    """-> (digest, codec, raw length, data)"""
    if len(body) < _BLOB_BODY.size:
        raise ProtocolError(f"malformed BLOB: {len(body)} bytes, shorter than its fixed part")
    digest, codec, raw_len = _BLOB_BODY.unpack_from(body)
    if codec not in (BLOB_RAW, BLOB_ZSTD):
        raise ProtocolError(f"malformed BLOB: unknown codec {codec}")
    data = memoryview(body)[_BLOB_BODY.size :]
    if codec == BLOB_RAW and len(data) != raw_len:
        raise ProtocolError(f"malformed BLOB: {len(data)} bytes of data, declared {raw_len}")
    return digest, codec, raw_len, data


def _digests(body: bytes | memoryview, what: str) -> list[bytes]:
    if len(body) % DIGEST_SIZE:
        raise ProtocolError(f"malformed {what}: digests take {len(body)} bytes")
    return [bytes(body[i : i + DIGEST_SIZE]) for i in range(0, len(body), DIGEST_SIZE)]


def encode_blob_drop(digests: list[bytes]) -> bytes:
    body = b"".join(digests)
    return HEADER.pack(_check_len(1 + len(body)), BLOB_DROP) + body


def decode_blob_drop(body: bytes) -> list[bytes]:
    return _digests(body, "BLOB_DROP")


def encode_blob_use(attempt_id: int, digests: list[bytes]) -> bytes:
    body = b"".join(digests)
    return _ID.pack(_ID.size - 4 + len(body), BLOB_USE, attempt_id) + body


def decode_blob_use(body: bytes) -> tuple[int, list[bytes]]:
    if len(body) < _ID_BODY.size:
        raise ProtocolError("malformed BLOB_USE: no attempt id")
    (attempt_id,) = _ID_BODY.unpack_from(body)
    return int(attempt_id), _digests(memoryview(body)[_ID_BODY.size :], "BLOB_USE")
