"""The writer side of an agent link: ``submit``/``cancel`` only queue frames, and one writer
thread owns the stream's sending side. Urgent frames (PING, CANCEL) overtake queued SUBMITs
at frame boundaries; a CANCEL of an attempt whose SUBMIT was not written yet drops the SUBMIT
(or, when it carries what the agent must see, has it cancelled right after it is written)."""

from __future__ import annotations

import threading

from . import _wire
from ._agent_base import _LinkBase, _Outbound
from ._blobs import blob_frames, blobs_of
from ._errors import HostErrorKind, HostUnavailableError
from ._link_state import LinkState

# Frames above this size count write progress as a sign of life: while a large
# SUBMIT is being sent the agent cannot answer PINGs queued behind it.
_PROGRESS_FRAME = 1 << 16


class _Writer(_LinkBase):
    """Queues frames (any thread) and writes them (the writer thread)."""

    def submit(
        self,
        attempt_id: int,
        fn_id: int,
        fn_payload: bytes,
        args_payload: bytes,
        timeout: float | None = None,
    ) -> None:
        with self._write_lock:
            if not self.alive:
                raise HostUnavailableError(
                    f"host {self.spec.name!r}: the link is "
                    f"{self._state.value}; cannot submit attempt {attempt_id}",
                    kind=HostErrorKind.LINK_LOST,
                    host=self.spec.name,
                )
            first = fn_id not in self._fns_sent
            frame = _wire.encode_submit(
                attempt_id, fn_id, fn_payload if first else None, args_payload
            )
            # Only once the frame exists (encoding may fail): the agent mirrors this LRU, so
            # the evicted ids must reach it right before this SUBMIT, in this order.
            _, evicted = self._fns_sent.use(fn_id, len(fn_payload))
            if timeout is not None:  # travels in the same write: never apart from its SUBMIT
                frame = _wire.encode_time_limit(attempt_id, timeout) + frame
            if evicted:
                frame = _wire.encode_evict(evicted) + frame
            blobs = blobs_of(args_payload)
            if blobs:  # the blobs the agent lacks go first (never dropped: the LRU counts
                # them as delivered), then BLOB_USE with the SUBMIT (dropped together)
                parts, use = blob_frames(attempt_id, blobs, self._blobs_sent, self._zstd)
                for head, data in parts:
                    self._outq.append(_Outbound(head, droppable=False, tail=data))
                frame = use + frame
            with self._state_lock:
                self._inflight.add(attempt_id)
            item = _Outbound(frame, attempt_id, droppable=not first and not evicted)
            self._queued_submits[attempt_id] = item
            self._outq.append(item)
            self._out_ready.notify()

    def cancel(self, attempt_id: int) -> None:
        with self._state_lock:
            if attempt_id not in self._inflight:
                return
            self._inflight.discard(attempt_id)
        with self._write_lock:
            queued = self._queued_submits.pop(attempt_id, None)
            if queued is not None:  # never reached the agent: nothing to kill
                if queued.droppable:
                    queued.dropped = True
                else:
                    queued.cancel_after = True
                return
        self._send_urgent(_wire.encode_cancel(attempt_id))

    def _next_frame(self) -> _Outbound | None:
        """The next frame to write (urgent first); None once the writer should exit."""
        with self._write_lock:
            while True:
                if self._urgent:
                    return self._urgent.popleft()
                while self._outq:
                    item = self._outq.popleft()
                    if item.attempt is not None:
                        self._queued_submits.pop(item.attempt, None)
                    if not item.dropped:
                        return item
                if self._state in (LinkState.DOWN, LinkState.CLOSED):
                    self._writer_done = True
                    return None
                self._out_ready.wait()

    def _writer(self) -> None:
        while True:
            item = self._next_frame()
            if item is None:
                return
            try:
                self._write(item.data)
                size = len(item.data)
                if item.tail is not None:
                    self._write(item.tail)
                    size += len(item.tail)
                self.bytes_sent += size
            except Exception as exc:
                if self._down_reason is None:
                    self._down_reason = f"write failed: {type(exc).__name__}: {exc}"
                with self._write_lock:
                    self._writer_done = True
                # the reader then sees the stream end and reports the link down
                threading.Thread(target=self._shutdown_transport, daemon=True).start()
                return
            if size >= _PROGRESS_FRAME:
                self._progress()
            if item.cancel_after and item.attempt is not None:
                self._send_urgent(_wire.encode_cancel(item.attempt))
