"""The controller's side of an agent connection, shared by SSHLink and LocalLink.

A subclass provides a byte stream to a freshly started ``python -c BOOTSTRAP``
process (an SSH exec channel, or pipes to a local child). This class ships
the agent's source over that stream, checks the agent's HELLO, then runs
three threads per link, so that no caller (above all the scheduler thread,
which owns every bundle) ever blocks on the network:

- a *writer* that owns the stream's sending side: ``submit``/``cancel``/
  ``close`` only append a frame to its queue and return. Urgent frames (PING,
  CANCEL) overtake queued SUBMITs at frame boundaries; a CANCEL of an attempt
  whose SUBMIT was not written yet just drops the SUBMIT.
- a *reader* that decodes frames and delivers :class:`LinkEvents`;
- a *pinger* that sends a PING every ``ping_interval`` (adapted to the measured
  round trip unless fixed), and watches how long the host has been silent
  (nothing received, no progress writing a large frame). Past ``suspect_after``
  the link turns SUSPECT (``on_link_health(suspect=True)``: the scheduler stops
  sending it work and backs up its attempts); past ``stall_timeout`` it is
  declared down. The agent is told a silence limit of its own, so it exits when
  the controller is gone even if no connection close ever reaches it.

Subclasses run a fourth thread that relays the agent's and tasks' stderr.

The link's state is a :class:`LinkState` changed only through ``_transition``.
Lock order: ``_write_lock`` (outbound queue, function and blob bookkeeping) before
``_state_lock`` (state, attempts in flight): ``submit`` holds both, nothing takes them
the other way round, and no thread does I/O while holding either.

The parts, one module each, all built on ``_LinkBase`` (``remote/_agent_base.py``: the
shared state, the state machine, the transport hooks): ``_agent_boot`` (bootstrap, agent
blob, HELLO), ``_agent_writer``, ``_agent_reader``, ``_agent_health`` (the pinger);
``_link_state`` holds LinkState and LinkTiming. This module combines them into
:class:`AgentLink` and holds its public life cycle (connect, ping, close).
"""

from __future__ import annotations

import contextlib
import threading
import time

from . import _wire
from ._agent_base import _Outbound
from ._agent_boot import (
    _agent_blob,
    _Handshake,
    _reads_compressed_results,
    bootstrap_code,
    check_hello,
)
from ._agent_health import _Health
from ._agent_reader import _Reader
from ._agent_writer import _Writer
from ._blobs import negotiate_compression
from ._errors import HostErrorKind, HostUnavailableError
from ._link import LinkEvents
from ._link_state import LinkState, LinkTiming

__all__ = ["AgentLink", "LinkState", "LinkTiming", "bootstrap_code", "check_hello"]


class AgentLink(_Handshake, _Writer, _Reader, _Health):
    """Base of the links that talk to a worker agent; see ``remote/_link.py`` for the contract."""

    def connect(self, events: LinkEvents) -> None:
        if not self._transition(LinkState.CONNECTING):
            raise RuntimeError("a link connects once; make a new link to reconnect")
        deadline = time.monotonic() + self.connect_timeout
        try:
            self._open(deadline)
            with contextlib.suppress(OSError):  # if it died already, _read_hello says why
                agent = _agent_blob(
                    self.spec.name,
                    self.spec.slots,
                    self.silence_limit,
                    self.spec.max_tasks_per_worker or 0,
                    self.spec.max_worker_memory or 0,
                    _reads_compressed_results(self.spec),
                )
                self.bytes_sent += len(agent)
                self._write(agent)
            info = self._read_hello(deadline)
            check_hello(self.spec, info)
            self._zstd = negotiate_compression(self.spec, info)
        except BaseException:
            self._transition(LinkState.DOWN)
            self._transition(LinkState.CLOSED)
            self._closed_event.set()
            self._shutdown_transport()
            raise
        self.hello = info
        self._events = events
        self._last_heard = time.monotonic()
        if not self._transition(LinkState.UP):  # closed while connecting
            self._finish_close()
            raise HostUnavailableError(
                f"host {self.spec.name!r}: the link was closed while connecting",
                kind=HostErrorKind.LINK_LOST,
                host=self.spec.name,
            )
        self._start_thread(self._reader, "reader")
        self._start_thread(self._writer, "writer")
        self._start_thread(self._pinger, "pinger")

    def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time to the agent in seconds (a PING/PONG through the connection)."""
        token = next(self._tokens)
        event = threading.Event()
        stamp: list[float] = []
        self._pings[token] = (event, stamp)
        try:
            if not self.alive:
                raise HostUnavailableError(
                    f"host {self.spec.name!r}: the link is not up",
                    kind=HostErrorKind.LINK_LOST,
                    host=self.spec.name,
                )
            start = time.perf_counter()
            self._send_urgent(_wire.encode_ping(token))
            if not event.wait(timeout) or not stamp:
                raise HostUnavailableError(
                    f"host {self.spec.name!r}: no answer to ping within {timeout:g} s",
                    kind=HostErrorKind.LINK_LOST,
                    host=self.spec.name,
                )
            return stamp[0] - start
        finally:
            self._pings.pop(token, None)

    def close(self) -> None:
        """Start closing and return at once: the agent is sent SHUTDOWN (after what is
        already queued, for at most a moment), then the transport is shut down in the
        background. ``wait_closed`` waits for that to finish."""
        was_up = self.alive
        if not self._transition(LinkState.CLOSED):
            return
        self._stop.set()
        if was_up:
            with self._write_lock:
                self._outq.append(_Outbound(_wire.encode_shutdown()))
                self._out_ready.notify()
        threading.Thread(
            target=self._finish_close, name=f"remote-close-{self.spec.name}", daemon=True
        ).start()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until a ``close`` (or a link that went down) has released everything."""
        return self._closed_event.wait(timeout)
