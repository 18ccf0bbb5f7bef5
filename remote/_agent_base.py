"""What the parts of an agent link share: its state, the locks that guard it, the state
machine, the transport hooks a subclass provides, and the few helpers every part uses.

:class:`_LinkBase` is the common base of the part mixins (``remote/_agent_boot.py``
handshake, ``remote/_agent_writer.py`` writer, ``remote/_agent_reader.py`` reader,
``remote/_agent_health.py`` pinger), which :class:`~remote._agent_client.AgentLink`
combines. Every attribute is created here, in ``__init__``, with the lock that guards it
(see the lock order in ``remote/_agent_client.py``).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from . import _wire
from ._blobs import BlobLRU
from ._fn_lru import FnLRU
from ._link import HostSpec, LinkEvents
from ._link_state import _LINK_TRANSITIONS, LinkState, LinkTiming

if TYPE_CHECKING:
    from ._agent_client import AgentLink

log = logging.getLogger("remote.link")


def _default_stderr(link: AgentLink, line: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(f"[{link.spec.name}] {line}\n")


def _default_stdout(link: AgentLink, line: str) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.write(f"[{link.spec.name}] {line}\n")


class _Outbound:
    """One frame waiting for the writer. ``attempt`` is set for SUBMITs so that a CANCEL
    can drop a SUBMIT that was never written, if it carries nothing the agent must see
    (a function or evictions the link's function cache already counts as delivered);
    such a SUBMIT is written and cancelled right after instead."""

    __slots__ = ("attempt", "cancel_after", "data", "droppable", "dropped", "tail")

    def __init__(
        self,
        data: bytes,
        attempt: int | None = None,
        droppable: bool = True,
        tail: bytes | None = None,
    ) -> None:
        self.data = data
        self.tail = tail  # written right after data: a blob's bytes, never copied into a frame
        self.attempt = attempt
        self.droppable = droppable
        self.dropped = False
        self.cancel_after = False


class _LinkBase:
    """The state and hooks of an agent link (see the module doc); not used on its own."""

    def __init__(
        self,
        spec: HostSpec,
        *,
        connect_timeout: float = 10.0,
        timing: LinkTiming | None = None,
        on_stderr: Callable[[AgentLink, str], None] | None = _default_stderr,
        on_stdout: Callable[[AgentLink, str], None] | None = _default_stdout,
        silence_limit: float | None = None,
    ) -> None:
        self.spec = spec
        self.connect_timeout = connect_timeout
        self.timing = timing or LinkTiming()
        # The agent exits (killing its slots) after this long without a byte from us; the
        # pinger writes at least every silence_limit / 4 while the link is up. 0: never.
        self.silence_limit = (
            self.timing.agent_silence_limit if silence_limit is None else silence_limit
        )
        self.hello: dict[str, Any] = {}
        self._on_stderr = on_stderr
        self._on_stdout = on_stdout
        self._stdout_pending = b""  # a task's partial stdout line (reader thread only)
        self._stdout_decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._events: LinkEvents | None = None
        self._state = LinkState.NEW
        self._state_lock = threading.Lock()
        self._inflight: set[int] = set()
        # --- outbound side, guarded by _write_lock ------------------------------------
        self._write_lock = threading.Lock()
        self._out_ready = threading.Condition(self._write_lock)
        self._urgent: collections.deque[_Outbound] = collections.deque()
        self._outq: collections.deque[_Outbound] = collections.deque()
        self._queued_submits: dict[int, _Outbound] = {}
        self._writer_done = False
        self._fns_sent = FnLRU()  # mirrors the agent's function cache (under _write_lock)
        # mirrors the agent's blob cache (under _write_lock; see remote/_blobs.py)
        self._blobs_sent = BlobLRU(spec.blob_cache_bytes)
        self._zstd = False  # the agent takes zstd-compressed blobs (decided at HELLO)
        self.bytes_sent = 0  # bytes written to the agent (the writer thread's counter)
        self.bytes_received = 0  # bytes read from the agent (the reader thread's counter)
        # --- health, written by the reader/writer threads, read by the pinger --------
        self._frames = _wire.FrameBuffer()
        self._pings: dict[int, tuple[threading.Event, list[float]]] = {}
        self._ping_sent: dict[int, float] = {}
        self._tokens = itertools.count(1)
        self._srtt: float | None = None
        self._down_reason: str | None = None
        self._last_heard = time.monotonic()
        self._last_tick: float | None = None
        self._stop = threading.Event()
        self._closed_event = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- transport hooks (subclasses) ------------------------------------------------------

    def _open(self, deadline: float) -> None:
        """Start ``python -c bootstrap_code()`` on the host, or raise HostUnavailableError."""
        raise NotImplementedError

    def _read(self, timeout: float | None) -> bytes:
        """Bytes from the agent's stdout; b"" at EOF; TimeoutError after *timeout*."""
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        """Write all of *data* (blocking). Called from the writer thread only (and from
        ``connect`` before it starts). Call ``_progress()`` between chunks of large data."""
        raise NotImplementedError

    def _shutdown_transport(self) -> None:
        """Close the stream and release everything; wait briefly for the agent to exit.
        Must unblock a reader or writer stuck on the stream."""
        raise NotImplementedError

    def _release(self) -> None:
        """Free what the threads used, once they have ended (after ``close``)."""

    def _failure_detail(self) -> str:
        """Why the stream ended, as far as the transport knows ("" if unknown)."""
        return ""

    # -- helpers for subclasses --------------------------------------------------------------

    def _progress(self) -> None:
        """Call while writing a large frame: a transfer in progress counts as a sign of life."""
        self._last_heard = time.monotonic()

    def _stderr_line(self, line: str) -> None:
        self._stderr_tail.append(line)
        if self._on_stderr is not None:
            self._on_stderr(cast("AgentLink", self), line)  # only AgentLinks are made

    def _stderr_pump(self, read: Callable[[], bytes]) -> None:
        pending = b""
        while True:
            try:
                chunk = read()
            except Exception:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._stderr_line(raw.decode("utf-8", "replace").rstrip("\r"))
        if pending:
            self._stderr_line(pending.decode("utf-8", "replace"))

    def _start_thread(self, target: Callable[[], None], what: str) -> None:
        thread = threading.Thread(
            target=target, name=f"remote-{what}-{self.spec.name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _stderr_summary(self) -> str:
        lines = [line for line in self._stderr_tail if line.strip()][-8:]
        return ("; its stderr ended with: " + " | ".join(lines)) if lines else ""

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    def _transition(self, new: LinkState) -> bool:
        """Move to *new* if the state machine allows it; False if the link already moved on
        (events race: a close and a stall, say). Only the allowed successors are legal."""
        with self._state_lock:
            if new not in _LINK_TRANSITIONS[self._state]:
                return False
            self._state = new
            if new in (LinkState.DOWN, LinkState.CLOSED):
                self._inflight.clear()
            return True

    @property
    def alive(self) -> bool:
        return self._state in (LinkState.UP, LinkState.SUSPECT)

    @property
    def srtt(self) -> float | None:
        """Smoothed round trip to the agent in seconds (None before the first PONG)."""
        return self._srtt

    # -- shared by the parts -------------------------------------------------------------------

    def _send_urgent(self, frame: bytes) -> None:
        with self._write_lock:
            if self._writer_done:
                return
            self._urgent.append(_Outbound(frame))
            self._out_ready.notify()

    def _deliver(self, handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except Exception:
            log.exception("event handler %r failed on link %s", handler, self.spec.name)

    def _finish_close(self) -> None:
        """Close thread: let the writer flush SHUTDOWN briefly, then tear the transport down."""
        with self._write_lock:
            self._out_ready.notify_all()
        writer = next((t for t in self._threads if t.name.startswith("remote-writer")), None)
        if writer is not None:
            writer.join(timeout=2.0)
        self._shutdown_transport()
        with self._write_lock:
            self._writer_done = True
            self._out_ready.notify_all()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout=5.0)
        self._release()
        self._closed_event.set()
