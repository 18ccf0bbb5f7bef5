"""The controller's side of an agent connection, shared by SSHLink and LocalLink.

A subclass provides a byte stream to a freshly started ``python -c BOOTSTRAP``
process (an SSH exec channel, or pipes to a local child). This class ships
the agent's source over that stream, checks the agent's HELLO, then runs:

- a reader thread that decodes frames and delivers :class:`LinkEvents`;
- a heartbeat thread that PINGs an idle agent and declares the link down
  when nothing has been heard for ``heartbeat_timeout`` seconds (a cut
  network may otherwise go unnoticed for many minutes);
- a stderr thread (subclasses) that relays the agent's and tasks' stderr.

Writes (SUBMIT, CANCEL, PING, SHUTDOWN) are serialised by a lock and go
straight to the stream from the caller's thread.
"""

from __future__ import annotations

import base64
import codecs
import collections
import contextlib
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _wire
from ._fn_lru import FnLRU
from ._link import HostSpec, HostUnavailableError, LinkEvents

__all__ = ["AgentLink", "bootstrap_code", "check_hello"]

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


def _agent_blob(name: str, slots: int, silence_limit: float = 0.0) -> bytes:
    """The length-prefixed JSON the bootstrap reads: the agent's modules and its argv
    (display name, slots, controller-silence limit in seconds, 0 = none)."""
    import json

    if not _sources:
        here = Path(__file__).parent
        _sources.extend(
            [
                ("parallelize_agent_wire", (here / "_wire.py").read_text()),
                ("parallelize_agent", (here / "worker.py").read_text()),
            ]
        )
    argv = [name, str(slots), repr(float(silence_limit))]
    data = json.dumps({"modules": _sources, "argv": argv}).encode()
    return len(data).to_bytes(4, "big") + data


def check_hello(spec: HostSpec, info: dict[str, Any]) -> None:
    """Raise HostUnavailableError unless the agent can run this controller's bundles."""
    where = f"host {spec.name!r} ({spec.host})"
    python = info.get("executable") or spec.python
    if info.get("error"):
        raise HostUnavailableError(
            f"{where}: the worker agent cannot start with {python}: {info['error']}. "
            f"Fix: install cloudpickle there (`{spec.python} -m pip install cloudpickle`) or "
            f"point `python = ...` for this host in the pool file at an interpreter that has it."
        )
    remote = str(info.get("python", "?"))
    local = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if remote.split(".")[:2] != local.split("."):
        raise HostUnavailableError(
            f"{where} runs Python {remote} ({python}) but the controller runs Python "
            f"{sys.version.split()[0]}: pickled functions only work between the same major.minor "
            f'version. Fix: set `python = "/path/to/python{local}"` for this host in the pool '
            f"file (or install Python {local} there)."
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
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 30.0,
        on_stderr: Callable[[AgentLink, str], None] | None = _default_stderr,
        on_stdout: Callable[[AgentLink, str], None] | None = _default_stdout,
        silence_limit: float = 30.0,
    ) -> None:
        self.spec = spec
        self.connect_timeout = connect_timeout
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        # The agent exits (killing its slots) after this long without a byte from us; the
        # heartbeat pings at least every silence_limit / 4 while the link is up. 0: never.
        self.silence_limit = silence_limit
        self.hello: dict[str, Any] = {}
        self._on_stderr = on_stderr
        self._on_stdout = on_stdout
        self._stdout_pending = b""  # a task's partial stdout line (reader thread only)
        self._stdout_decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._events: LinkEvents | None = None
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._inflight: set[int] = set()
        self._fns_sent = FnLRU()  # mirrors the agent's function cache (under _write_lock)
        self._frames = _wire.FrameBuffer()
        self._pings: dict[int, tuple[threading.Event, list[float]]] = {}
        self._tokens = itertools.count(1)
        self._connected = False
        self._closed = False
        self._down = False
        self._down_reason: str | None = None
        self._last_progress = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- transport hooks (subclasses) ------------------------------------------------------

    def _open(self, deadline: float) -> None:
        """Start ``python -c bootstrap_code()`` on the host, or raise HostUnavailableError."""
        raise NotImplementedError

    def _read(self, timeout: float | None) -> bytes:
        """Bytes from the agent's stdout; b"" at EOF; TimeoutError after *timeout*."""
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _shutdown_transport(self) -> None:
        """Close the stream and release everything; wait briefly for the agent to exit."""
        raise NotImplementedError

    def _release(self) -> None:
        """Free what the threads used, once they have ended (after ``close``)."""

    def _failure_detail(self) -> str:
        """Why the stream ended, as far as the transport knows ("" if unknown)."""
        return ""

    # -- helpers for subclasses --------------------------------------------------------------

    def _progress(self) -> None:
        """Call while writing a large frame: a transfer in progress counts as a sign of life."""
        self._last_progress = time.monotonic()

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

    # -- HostLink ----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._connected and not self._down and not self._closed

    def connect(self, events: LinkEvents) -> None:
        if self._connected or self._closed:
            raise RuntimeError("a link connects once; make a new link to reconnect")
        deadline = time.monotonic() + self.connect_timeout
        self._open(deadline)
        try:
            with contextlib.suppress(OSError):  # if it died already, _read_hello says why
                self._write(_agent_blob(self.spec.name, self.spec.slots, self.silence_limit))
            info = self._read_hello(deadline)
            check_hello(self.spec, info)
        except BaseException:
            self._closed = True
            self._shutdown_transport()
            raise
        self.hello = info
        self._events = events
        self._connected = True
        self._last_progress = time.monotonic()
        self._start_thread(self._reader, "reader")
        self._start_thread(self._heartbeat, "heartbeat")

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
                    f"host {self.spec.name!r}: garbled agent output ({exc})"
                ) from None
            if frames:
                kind, body = frames[0]
                if kind != _wire.HELLO:
                    raise HostUnavailableError(
                        f"host {self.spec.name!r}: unexpected {_wire.message_name(kind)} "
                        "from the worker agent before HELLO"
                    )
                if len(frames) > 1:
                    raise HostUnavailableError(f"host {self.spec.name!r}: garbled agent output")
                return _wire.decode_hello(body)

    def _hello_failure(
        self, noise: bytearray, found: bool, plain: str, noisy: str
    ) -> HostUnavailableError:
        """The error for a missing HELLO: *plain*, or, when the remote shell printed text and
        the agent never announced itself, a message that says so and how to fix it."""
        where = f"host {self.spec.name!r} ({self.spec.host})"
        if found or not noise.strip():
            return HostUnavailableError(f"{where}: {plain}")
        text = bytes(noise[:_NOISE_KEEP]).decode("utf-8", "replace").strip()
        if len(text) > 300:
            text = text[:300] + "..."
        return HostUnavailableError(
            f"{where}: the remote shell printed text before the agent started, and {noisy}: "
            f"{text!r}{self._stderr_summary()}. Fix: make the shell startup files on that host "
            "(~/.bashrc, ~/.profile, ~/.zshenv, ...) print nothing for non-interactive "
            "shells, e.g. start ~/.bashrc with `[[ $- == *i* ]] || return`."
        )

    def submit(self, attempt_id: int, fn_id: int, fn_payload: bytes, args_payload: bytes) -> None:
        with self._write_lock:
            if not self.alive:
                raise HostUnavailableError(
                    f"host {self.spec.name!r}: the link is "
                    f"{'closed' if self._closed else 'down'}; cannot submit attempt {attempt_id}"
                )
            first = fn_id not in self._fns_sent
            frame = _wire.encode_submit(
                attempt_id, fn_id, fn_payload if first else None, args_payload
            )
            # Only once the frame exists (encoding may fail): the agent mirrors this LRU, so
            # the evicted ids must reach it right before this SUBMIT, in this order.
            _, evicted = self._fns_sent.use(fn_id, len(fn_payload))
            if evicted:
                frame = _wire.encode_evict(evicted) + frame
            with self._state_lock:
                self._inflight.add(attempt_id)
            self._write_locked(frame)

    def cancel(self, attempt_id: int) -> None:
        with self._state_lock:
            if attempt_id not in self._inflight:
                return
            self._inflight.discard(attempt_id)
        with self._write_lock:
            if self.alive:
                self._write_locked(_wire.encode_cancel(attempt_id))

    def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time to the agent in seconds (a PING/PONG through the connection)."""
        token = next(self._tokens)
        event = threading.Event()
        stamp: list[float] = []
        self._pings[token] = (event, stamp)
        try:
            with self._write_lock:
                if not self.alive:
                    raise HostUnavailableError(f"host {self.spec.name!r}: the link is not up")
                start = time.perf_counter()
                self._write_locked(_wire.encode_ping(token))
            if not event.wait(timeout) or not stamp:
                raise HostUnavailableError(
                    f"host {self.spec.name!r}: no answer to ping within {timeout:g} s"
                )
            return stamp[0] - start
        finally:
            self._pings.pop(token, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._connected and not self._down and self._write_lock.acquire(timeout=2.0):
            try:
                self._write(_wire.encode_shutdown())
            except Exception:
                pass
            finally:
                self._write_lock.release()
        self._shutdown_transport()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout=5.0)
        self._release()

    # -- internals ---------------------------------------------------------------------------

    def _write_locked(self, frame: bytes) -> None:
        try:
            self._write(frame)
        except Exception as exc:
            # The reader sees the stream end and reports the link down (with this reason).
            if self._down_reason is None:
                self._down_reason = f"write failed: {type(exc).__name__}: {exc}"
            self._stop.set()
            threading.Thread(target=self._shutdown_transport, daemon=True).start()

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
                self._last_progress = time.monotonic()
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
        elif kind == _wire.RESULT:
            attempt_id, ok, payload, duration = _wire.decode_result(body)
            self._stdout(b"", final=True)  # the task's last partial line before its result
            if self._take(attempt_id):
                self._deliver(events.on_result, self, attempt_id, ok, payload, duration)
        elif kind == _wire.LOST:
            attempt_id, why = _wire.decode_lost(body)
            self._stdout(b"", final=True)
            if self._take(attempt_id):
                self._deliver(events.on_attempt_lost, self, attempt_id, why)
        elif kind == _wire.PONG:
            now = time.perf_counter()
            waiter = self._pings.get(_wire.decode_ping(body))
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
            if attempt_id in self._inflight and not self._closed:
                self._inflight.discard(attempt_id)
                return True
            return False

    def _deliver(self, handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except Exception:
            log.exception("event handler %r failed on link %s", handler, self.spec.name)

    def _link_down(self, events: LinkEvents, reason: str) -> None:
        with self._state_lock:
            if self._down:
                return
            self._down = True
            self._inflight.clear()
        self._stop.set()
        for event, _ in list(self._pings.values()):
            event.set()
        if self._closed:
            return  # closed on purpose: no event
        detail = self._down_reason or reason or self._failure_detail() or "connection closed"
        time.sleep(0.02)  # let the stderr thread catch the agent's last words
        self._deliver(
            events.on_link_down,
            self,
            f"host {self.spec.name!r} ({self.spec.host}): {detail}{self._stderr_summary()}",
        )
        threading.Thread(target=self._shutdown_transport, daemon=True).start()

    def _heartbeat(self) -> None:
        # Besides pinging an idle agent, ping at least every silence_limit / 4 so the agent
        # never mistakes a live controller for a gone one (stop-gap until the heartbeat
        # rewrite, which must keep that guarantee).
        keep_alive = self.silence_limit / 4 if self.silence_limit > 0 else float("inf")
        last_ping = time.monotonic()
        while not self._stop.wait(min(self.heartbeat_interval, keep_alive / 2)):
            silent = time.monotonic() - self._last_progress
            if silent > self.heartbeat_timeout:
                self._down_reason = f"no response from the host for {silent:.0f} s"
                self._shutdown_transport()  # the reader sees EOF and reports the link down
                return
            due = time.monotonic() - last_ping >= keep_alive / 2  # so no gap exceeds keep_alive
            if (silent >= self.heartbeat_interval or due) and self._write_lock.acquire(
                blocking=False
            ):
                try:
                    self._write_locked(_wire.encode_ping(0))
                    last_ping = time.monotonic()
                finally:
                    self._write_lock.release()
