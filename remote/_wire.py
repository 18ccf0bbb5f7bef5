"""The framed binary protocol between the controller and a worker agent.

Every message is one frame::

    +----------------------+-----------+------------------------+
    | length: uint32 (BE)  | type: u8  | body: length - 1 bytes |
    +----------------------+-----------+------------------------+

``length`` counts the type byte and the body. Bodies start with fixed-size
fields packed with :mod:`struct` (big endian) followed by one variable-size
blob, so encoding and decoding are a single ``pack``/``unpack`` plus slicing.

Controller -> agent: SUBMIT, CANCEL, PING, SHUTDOWN.
Agent -> controller: HELLO, RESULT, LOST, PONG.
The agent uses the same SUBMIT and RESULT frames with its slot processes.

This module is shipped to remote hosts with the agent (see ``worker.py``):
it must import nothing but the standard library.
"""

from __future__ import annotations

import json
import struct
from typing import Any

__all__ = [
    "CANCEL",
    "HEADER",
    "HELLO",
    "LOST",
    "PING",
    "PONG",
    "RESULT",
    "SHUTDOWN",
    "SUBMIT",
    "FrameBuffer",
    "ProtocolError",
    "decode_cancel",
    "decode_hello",
    "decode_lost",
    "decode_ping",
    "decode_result",
    "decode_submit",
    "encode_cancel",
    "encode_hello",
    "encode_lost",
    "encode_ping",
    "encode_pong",
    "encode_result",
    "encode_shutdown",
    "encode_submit",
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

_NAMES = {
    HELLO: "HELLO",
    SUBMIT: "SUBMIT",
    CANCEL: "CANCEL",
    RESULT: "RESULT",
    LOST: "LOST",
    PING: "PING",
    PONG: "PONG",
    SHUTDOWN: "SHUTDOWN",
}

HEADER = struct.Struct(">IB")  # length (type byte + body), type

_SUBMIT = struct.Struct(">IBQQ?I")  # header, attempt_id, fn_id, has_fn, fn length
_RESULT = struct.Struct(">IBQ?d")  # header, attempt_id, ok, duration
_ID = struct.Struct(">IBQ")  # header, attempt_id / token


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


def encode_result(attempt_id: int, ok: bool, payload: bytes, duration: float) -> bytes:
    size = _check_len(_RESULT.size - 4 + len(payload))
    return _RESULT.pack(size, RESULT, attempt_id, ok, duration) + payload


def encode_lost(attempt_id: int, reason: str) -> bytes:
    body = reason.encode("utf-8", "replace")
    return _ID.pack(_ID.size - 4 + len(body), LOST, attempt_id) + body


def encode_ping(token: int) -> bytes:
    return _ID.pack(_ID.size - 4, PING, token)


def encode_pong(token: int) -> bytes:
    return _ID.pack(_ID.size - 4, PONG, token)


def encode_shutdown() -> bytes:
    return HEADER.pack(1, SHUTDOWN)


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
    try:
        attempt_id, fn_id, has_fn, fn_len = _SUBMIT_BODY.unpack_from(body)
    except struct.error as exc:
        raise ProtocolError(f"malformed SUBMIT: {exc}") from None
    start = _SUBMIT_BODY.size
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


def _decode_id(body: bytes, what: str) -> int:
    try:
        (value,) = _ID_BODY.unpack_from(body)
    except struct.error as exc:
        raise ProtocolError(f"malformed {what}: {exc}") from None
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
            frames.append((kind, bytes(buf[pos + 5 : stop])))
            pos = stop
        if pos:
            del buf[:pos]
        return frames

    def pending(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buf)
