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
Lock order: ``_write_lock`` (outbound queue, function bookkeeping) and
``_state_lock`` (state, attempts in flight) are never held together.
"""

from __future__ import annotations

import base64
import codecs
import collections
import contextlib
import enum
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallelize.ext import outcome_codec

from . import _wire
from ._blobs import BlobLRU, blob_frames, blobs_of, negotiate_compression, zstd_version
from ._errors import HostErrorKind, HostUnavailableError
from ._fn_lru import FnLRU
from ._link import HostSpec, LinkEvents

__all__ = ["AgentLink", "LinkState", "LinkTiming", "bootstrap_code", "check_hello"]

log = logging.getLogger("remote.link")

_BOOTSTRAP = """
import os, sys, json, types
def _parallelize_read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            raise SystemExit("parallelize agent: connection closed during bootstrap")
        data += chunk
    return data
_blob = json.loads(_parallelize_read(int.from_bytes(_parallelize_read(4), "big")).decode())
for _name, _source in _blob["modules"]:
    _module = types.ModuleType(_name)
    _module.__file__ = "<" + _name + ">"
    sys.modules[_name] = _module
    exec(compile(_source, _module.__file__, "exec"), _module.__dict__)
sys.modules["parallelize_agent"].main(_blob["argv"])
"""


def bootstrap_code() -> str:
    """A one-line ``python -c`` program (shell-safe characters only) that reads the agent's
    source from stdin and runs it."""
    encoded = base64.b64encode(_BOOTSTRAP.encode()).decode()
    return f'import base64;exec(base64.b64decode("{encoded}"))'


_sources: list[tuple[str, str]] = []


def _agent_blob(
    name: str,
    slots: int,
    silence_limit: float = 0.0,
    max_tasks: int = 0,
    max_memory: int = 0,
    compress_results: bool = False,
) -> bytes:
    """The length-prefixed JSON the bootstrap reads: the agent's modules and its argv
    (display name, slots, controller-silence limit in seconds, attempts and resident bytes
    per slot process before it is recycled; 0 = none; whether this controller reads
    zstd-compressed results)."""
    import json

    if not _sources:
        here = Path(__file__).parent
        _sources.extend(
            [
                ("parallelize_agent_outcome", Path(outcome_codec.__file__).read_text()),
                ("parallelize_agent_wire", (here / "_wire.py").read_text()),
                ("parallelize_agent", (here / "worker.py").read_text()),
            ]
        )
    argv = [
        name,
        str(slots),
        repr(float(silence_limit)),
        str(max_tasks),
        str(max_memory),
        "1" if compress_results else "0",
    ]
    data = json.dumps({"modules": _sources, "argv": argv}).encode()
    return len(data).to_bytes(4, "big") + data


def _reads_compressed_results(spec: HostSpec) -> bool:
    """Whether to let this host's agent compress large results: where zstd can pay (not
    over local pipes, not switched off in the pool file) and this side can read them."""
    return not spec.is_local and spec.compression != "none" and zstd_version() is not None


def _decompress_result(payload: bytes) -> bytes:
    """A RESULT_ZSTD payload's bytes (in the link's reader thread, not the scheduler's)."""
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompress(payload)
    except zstandard.ZstdError as exc:
        raise _wire.ProtocolError(f"a RESULT_ZSTD that does not decompress: {exc}") from None


def check_hello(spec: HostSpec, info: dict[str, Any]) -> None:
    """Raise HostUnavailableError unless the agent can run this controller's bundles."""
    where = f"host {spec.name!r} ({spec.host})"
    python = info.get("executable") or spec.python
    if info.get("error"):
        raise HostUnavailableError(
            f"{where}: the worker agent cannot start with {python}: {info['error']}. "
            f"Fix: install cloudpickle there (`{spec.python} -m pip install cloudpickle`) or "
            f"point `python = ...` for this host in the pool file at an interpreter that has it.",
            kind=HostErrorKind.VERSION,
            host=spec.name,
        )
    if info.get("protocol") != _wire.PROTOCOL:
        raise HostUnavailableError(
            f"{where}: its worker agent speaks protocol {info.get('protocol', 1)}, this "
            f"controller protocol {_wire.PROTOCOL}. Fix: let the link start the agent (it "
            "ships its own source), not an agent started by hand from another version.",
            kind=HostErrorKind.AGENT_START,
            host=spec.name,
        )
    remote = str(info.get("python", "?"))
    local = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if remote.split(".")[:2] != local.split("."):
        raise HostUnavailableError(
            f"{where} runs Python {remote} ({python}) but the controller runs Python "
            f"{sys.version.split()[0]}: pickled functions only work between the same major.minor "
            f'version. Fix: set `python = "/path/to/python{local}"` for this host in the pool '
            f"file (or install Python {local} there).",
            kind=HostErrorKind.VERSION,
            host=spec.name,
        )
    import cloudpickle

    theirs, ours = str(info.get("cloudpickle")), str(cloudpickle.__version__)
    if theirs.split(".")[:1] != ours.split(".")[:1]:
        log.warning(
            "%s has cloudpickle %s, the controller has %s; pickles may not load",
            where,
            theirs,
            ours,
        )


def _default_stderr(link: AgentLink, line: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(f"[{link.spec.name}] {line}\n")


class LinkState(enum.Enum):
    """Where a link is in its life (see ``_LINK_TRANSITIONS`` for what may follow what)."""

    NEW = "new"
    CONNECTING = "connecting"
    UP = "up"
    SUSPECT = "suspect"  # connected, but the host has been silent past suspect_after
    DOWN = "down"  # the connection broke or stalled; terminal but for CLOSED
    CLOSED = "closed"  # closed on purpose (or after DOWN); terminal


_LINK_TRANSITIONS: dict[LinkState, frozenset[LinkState]] = {
    LinkState.NEW: frozenset({LinkState.CONNECTING, LinkState.CLOSED}),
    LinkState.CONNECTING: frozenset({LinkState.UP, LinkState.DOWN, LinkState.CLOSED}),
    LinkState.UP: frozenset({LinkState.SUSPECT, LinkState.DOWN, LinkState.CLOSED}),
    LinkState.SUSPECT: frozenset({LinkState.UP, LinkState.DOWN, LinkState.CLOSED}),
    LinkState.DOWN: frozenset({LinkState.CLOSED}),
    LinkState.CLOSED: frozenset(),
}


@dataclass(frozen=True)
class LinkTiming:
    """How a link watches its host.

    ``ping_interval``: None adapts it to the smoothed round trip (``ping_rtt_factor`` x
    RTT, kept between ``ping_min`` and ``ping_max``). The host is *suspect* after
    ``max(suspect_min, 2 x ping interval + 8 x RTT)`` seconds of silence and *down*
    after ``stall_timeout``. The agent exits after ``silence_limit`` seconds without a
    byte from the controller (None: ``stall_timeout + 4 x ping_max``)."""

    stall_timeout: float = 10.0
    ping_interval: float | None = None
    ping_min: float = 0.25
    ping_max: float = 1.0
    ping_rtt_factor: float = 20.0
    suspect_min: float = 1.0
    silence_limit: float | None = None

    def __post_init__(self) -> None:
        if not self.stall_timeout > 0:
            raise ValueError(f"stall_timeout must be positive, got {self.stall_timeout!r}")
        if self.ping_interval is not None and not self.ping_interval > 0:
            raise ValueError(f"ping_interval must be positive, got {self.ping_interval!r}")

    @property
    def agent_silence_limit(self) -> float:
        if self.silence_limit is not None:
            return self.silence_limit
        return self.stall_timeout + 4 * max(self.ping_max, self.ping_interval or 0.0)

    def interval(self, srtt: float | None) -> float:
        if self.ping_interval is not None:
            return self.ping_interval
        if srtt is None:
            return self.ping_min
        return min(self.ping_max, max(self.ping_min, self.ping_rtt_factor * srtt))

    def suspect_after(self, srtt: float | None) -> float:
        rtt = srtt or 0.0
        return min(self.stall_timeout, max(self.suspect_min, 2 * self.interval(srtt) + 8 * rtt))


_URGENT = (_wire.PING, _wire.CANCEL)
# Frames above this size count write progress as a sign of life: while a large
# SUBMIT is being sent the agent cannot answer PINGs queued behind it.
_PROGRESS_FRAME = 1 << 16


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


def _default_stdout(link: AgentLink, line: str) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.write(f"[{link.spec.name}] {line}\n")


_STDOUT_LINE_MAX = 1 << 16  # a longer line without a newline is passed on in pieces
_NOISE_KEEP = 4096  # bytes of a noisy shell's output kept for the error message


class AgentLink:
    """Base of the links that talk to a worker agent; see ``remote/_link.py`` for the contract."""

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
            self._on_stderr(self, line)

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

    # -- HostLink ----------------------------------------------------------------------------

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

    def _read_hello(self, deadline: float) -> dict[str, Any]:
        """Read up to the agent's HELLO: skip (and report) what the remote shell printed before
        the agent's MAGIC marker; raise HostUnavailableError naming what went wrong."""
        noise = bytearray()  # everything before MAGIC
        found = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._hello_failure(
                    noise,
                    found,
                    f"the worker agent did not start within {self.connect_timeout:g} s"
                    f"{self._stderr_summary()}",
                    f"the agent did not start within {self.connect_timeout:g} s",
                )
            try:
                data = self._read(remaining)
            except TimeoutError:
                continue
            except OSError as exc:
                data = b""
                self._down_reason = str(exc)
            if not data:
                detail = self._failure_detail()
                time.sleep(0.05)  # let the stderr thread catch the agent's last words
                raise self._hello_failure(
                    noise,
                    found,
                    f"the worker agent exited before saying hello ({detail or 'stream closed'}) "
                    f"when started as {self.spec.python!r}{self._stderr_summary()}. Fix: check "
                    "that `python` for this host names a Python 3 interpreter with cloudpickle.",
                    f"no agent started ({detail or 'stream closed'})",
                )
            if not found:
                noise += data
                at = noise.find(_wire.MAGIC)
                if at < 0:
                    if len(noise) > _NOISE_KEEP + len(_wire.MAGIC):  # keep the head and a tail
                        del noise[_NOISE_KEEP : len(noise) - len(_wire.MAGIC)]  # to find MAGIC
                    continue
                found = True
                data = bytes(noise[at + len(_wire.MAGIC) :])
                del noise[at:]
                if noise:
                    log.warning(
                        "host %r: the remote shell printed %d bytes before the worker agent "
                        "started (ignored): %r. Make the shell startup files print nothing "
                        "for non-interactive shells.",
                        self.spec.name,
                        len(noise),
                        bytes(noise[:200]),
                    )
            try:
                frames = self._frames.feed(data)
            except _wire.ProtocolError as exc:
                raise HostUnavailableError(
                    f"host {self.spec.name!r}: garbled agent output ({exc})",
                    kind=HostErrorKind.AGENT_START,
                    host=self.spec.name,
                ) from None
            if frames:
                kind, body = frames[0]
                if kind != _wire.HELLO:
                    raise HostUnavailableError(
                        f"host {self.spec.name!r}: unexpected {_wire.message_name(kind)} "
                        "from the worker agent before HELLO",
                        kind=HostErrorKind.AGENT_START,
                        host=self.spec.name,
                    )
                if len(frames) > 1:
                    raise HostUnavailableError(
                        f"host {self.spec.name!r}: garbled agent output",
                        kind=HostErrorKind.AGENT_START,
                        host=self.spec.name,
                    )
                return _wire.decode_hello(body)

    def _hello_failure(
        self, noise: bytearray, found: bool, plain: str, noisy: str
    ) -> HostUnavailableError:
        """The error for a missing HELLO: *plain*, or, when the remote shell printed text and
        the agent never announced itself, a message that says so and how to fix it."""
        where = f"host {self.spec.name!r} ({self.spec.host})"
        if found or not noise.strip():
            return HostUnavailableError(
                f"{where}: {plain}", kind=HostErrorKind.AGENT_START, host=self.spec.name
            )
        text = bytes(noise[:_NOISE_KEEP]).decode("utf-8", "replace").strip()
        if len(text) > 300:
            text = text[:300] + "..."
        return HostUnavailableError(
            f"{where}: the remote shell printed text before the agent started, and {noisy}: "
            f"{text!r}{self._stderr_summary()}. Fix: make the shell startup files on that host "
            "(~/.bashrc, ~/.profile, ~/.zshenv, ...) print nothing for non-interactive "
            "shells, e.g. start ~/.bashrc with `[[ $- == *i* ]] || return`.",
            kind=HostErrorKind.NOISY_SHELL,
            host=self.spec.name,
        )

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

    # -- internals ---------------------------------------------------------------------------

    def _send_urgent(self, frame: bytes) -> None:
        with self._write_lock:
            if self._writer_done:
                return
            self._urgent.append(_Outbound(frame))
            self._out_ready.notify()

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

    def _deliver(self, handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except Exception:
            log.exception("event handler %r failed on link %s", handler, self.spec.name)

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

    def _pinger(self) -> None:
        """Ping on an interval adapted to the round trip; turn SUSPECT, then DOWN, on silence.

        A late wake-up of this thread itself (the controller starved of CPU or the GIL)
        is not held against the host: silence is judged only on punctual ticks."""
        events = self._events
        assert events is not None
        timing = self.timing

        def next_interval() -> float:
            # the agent must hear from us well within its silence limit (see __init__)
            keep_alive = self.silence_limit / 4 if self.silence_limit > 0 else float("inf")
            return min(timing.interval(self._srtt), keep_alive)

        interval = next_interval()
        while not self._stop.wait(interval):
            now = time.monotonic()
            punctual = True
            interval_before = interval
            interval = next_interval()
            silent = now - self._last_heard
            if silent > timing.stall_timeout:
                self._down_reason = (
                    f"no response from the host for {silent:.1f} s "
                    f"(stall_timeout={timing.stall_timeout:g} s)"
                )
                self._shutdown_transport()  # the reader sees EOF and reports the link down
                return
            if self._last_tick is not None and now - self._last_tick > 2 * interval_before + 0.5:
                punctual = False
            self._last_tick = now
            if punctual and silent > timing.suspect_after(self._srtt):
                if self._transition(LinkState.SUSPECT):
                    self._deliver(events.on_link_health, self, True, silent)
            elif silent < interval + 4 * (self._srtt or 0.0) + 0.05 and self._transition(
                LinkState.UP
            ):
                self._deliver(events.on_link_health, self, False, silent)
            token = next(self._tokens)
            self._ping_sent[token] = time.perf_counter()
            if len(self._ping_sent) > 64:  # unanswered pings of a silent host
                self._ping_sent.pop(next(iter(self._ping_sent)))
            self._send_urgent(_wire.encode_ping(token))
