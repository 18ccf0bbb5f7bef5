"""The reader side of an agent link: one thread decodes the agent's frames and delivers
:class:`~remote._link.LinkEvents` (results, lost and timed-out attempts, the link going
down), passes tasks' stdout on line by line and times PONGs for the smoothed round trip."""

from __future__ import annotations

import threading
import time

from . import _wire
from ._agent_base import _LinkBase
from ._link import LinkEvents
from ._link_state import LinkState

_STDOUT_LINE_MAX = 1 << 16  # a longer line without a newline is passed on in pieces


def _decompress_result(payload: bytes) -> bytes:
    """A RESULT_ZSTD payload's bytes (in the link's reader thread, not the scheduler's)."""
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompress(payload)
    except zstandard.ZstdError as exc:
        raise _wire.ProtocolError(f"a RESULT_ZSTD that does not decompress: {exc}") from None


class _Reader(_LinkBase):
    """Runs in the reader thread; an attempt's outcome is delivered at most once (``_take``)."""

    def _reader(self) -> None:
        events = self._events
        assert events is not None
        reason = ""
        try:
            while True:
                try:
                    data = self._read(None)
                except TimeoutError:
                    continue
                except Exception as exc:
                    data = b""
                    reason = f"{type(exc).__name__}: {exc}"
                if not data:
                    break
                self._last_heard = time.monotonic()
                self.bytes_received += len(data)
                for kind, body in self._frames.feed(data):
                    self._dispatch(events, kind, body)
        except _wire.ProtocolError as exc:
            reason = f"protocol error: {exc}"
        self._link_down(events, reason)

    def _dispatch(self, events: LinkEvents, kind: int, body: bytes) -> None:
        if kind == _wire.OUTPUT:
            stream, data = _wire.decode_output(body)
            if stream == _wire.STDOUT:
                self._stdout(data, final=False)
        elif kind == _wire.RESULT or kind == _wire.RESULT_ZSTD:
            attempt_id, ok, payload, duration = _wire.decode_result(body)
            if kind == _wire.RESULT_ZSTD:
                payload = _decompress_result(payload)
            self._stdout(b"", final=True)  # the task's last partial line before its result
            if self._take(attempt_id):
                self._deliver(events.on_result, self, attempt_id, ok, payload, duration)
        elif kind == _wire.LOST:
            attempt_id, why = _wire.decode_lost(body)
            self._stdout(b"", final=True)
            if self._take(attempt_id):
                self._deliver(events.on_attempt_lost, self, attempt_id, why)
        elif kind == _wire.TIMED_OUT:
            attempt_id, ran = _wire.decode_timed_out(body)
            self._stdout(b"", final=True)
            if self._take(attempt_id):
                self._deliver(events.on_attempt_timeout, self, attempt_id, ran)
        elif kind == _wire.PONG:
            now = time.perf_counter()
            token = _wire.decode_ping(body)
            self._on_pong(token, now)
            waiter = self._pings.get(token)
            if waiter is not None:
                waiter[1].append(now)
                waiter[0].set()
        elif kind == _wire.ERROR:
            # The agent rejected a frame of ours and exits; the reader then sees the stream
            # end and reports the link down with this reason.
            if self._down_reason is None:
                self._down_reason = f"the worker agent rejected a frame: {_wire.decode_error(body)}"
        else:
            raise _wire.ProtocolError(f"unexpected {_wire.message_name(kind)} from the agent")

    def _on_pong(self, token: int, now: float) -> None:
        sent = self._ping_sent.pop(token, None)
        if sent is not None:
            sample = now - sent
            self._srtt = sample if self._srtt is None else 0.875 * self._srtt + 0.125 * sample

    def _stdout(self, data: bytes, *, final: bool) -> None:
        """Pass tasks' stdout on line by line (reader thread only). A partial line waits for
        its end, for the end of a task (*final*), or until it is _STDOUT_LINE_MAX long."""
        if self._on_stdout is None:
            return
        pending = self._stdout_pending + data
        *lines, pending = pending.split(b"\n")
        if pending and (final or len(pending) >= _STDOUT_LINE_MAX):
            lines.append(pending)
            pending = b""
        self._stdout_pending = pending
        for raw in lines:
            text = self._stdout_decoder.decode(raw).rstrip("\r")
            self._deliver(self._on_stdout, self, text)

    def _take(self, attempt_id: int) -> bool:
        with self._state_lock:
            if attempt_id in self._inflight and self._state is not LinkState.CLOSED:
                self._inflight.discard(attempt_id)
                return True
            return False

    def _link_down(self, events: LinkEvents, reason: str) -> None:
        closed = self._state is LinkState.CLOSED
        went_down = self._transition(LinkState.DOWN)
        self._stop.set()
        with self._write_lock:
            self._out_ready.notify_all()
        for event, _ in list(self._pings.values()):
            event.set()
        if not went_down or closed:
            return  # closed on purpose: no event
        detail = self._down_reason or reason or self._failure_detail() or "connection closed"
        time.sleep(0.02)  # let the stderr thread catch the agent's last words
        self._deliver(
            events.on_link_down,
            self,
            f"host {self.spec.name!r} ({self.spec.host}): {detail}{self._stderr_summary()}",
        )
        threading.Thread(target=self._after_down, daemon=True).start()

    def _after_down(self) -> None:
        self._shutdown_transport()
        if self._transition(LinkState.CLOSED):
            self._finish_close()
