"""The worker agent: runs bundles on a host for one controller connection.

Started by a link (``remote/_ssh_link.py`` over SSH, ``remote/_local_link.py``
over pipes) and spoken to on stdin/stdout with the framed protocol of
``remote/_wire.py``. It can also be run by hand as ``python -m remote.worker NAME
SLOTS [SILENCE_LIMIT [MAX_TASKS [MAX_MEMORY]]]``, but links do not need the project
installed on the host: they send the source of this module, of ``_wire`` and of the
call runner and outcome codec every worker runtime shares (``parallelize/_outcome.py``,
also PROCESS's) over the connection and start it with a short ``python -c`` bootstrap,
so any POSIX host with Python and cloudpickle works. Hence this module imports only the
standard library and cloudpickle.

Why one module above the usual size: it is the whole agent program, shipped to hosts as
source; its state (slots, queue, function cache, streams) belongs to one single-threaded
loop in :class:`Agent`, and the slot side (``_slot_loop`` onwards) runs in processes forked
from it.

Design:

- The agent is one single-threaded process with a ``selectors`` loop over
  its stdin, the result pipes of its slot processes, the slots' shared
  stdout pipe and a SIGCHLD wakeup pipe.
- Each attempt runs in a slot process *forked from the agent* (a warm
  zygote: cloudpickle is already imported), each in its own process group.
  A slot runs one attempt at a time and then waits for the next one, so no
  interpreter starts per bundle. ``SLOTS`` slots are forked up front and
  replaced when they die; attempts submitted while all slots are busy wait
  in a queue in the agent (the scheduler normally sends at most SLOTS).
- A slot that dies reports ``LOST(attempt, "process exited with code N")``
  or ``"killed by signal SIGKILL"`` and is replaced. CANCEL kills the
  attempt's process group with SIGKILL and replaces the slot; no event
  follows for a cancelled attempt.
- Per-call timeouts: a TIME_LIMIT frame before a SUBMIT gives that attempt a
  limit; the clock starts when a slot starts the attempt (not while it waits
  in the agent's queue). On expiry the agent kills the slot's process group
  (SIGKILL), replaces the slot and sends TIMED_OUT; no RESULT or LOST follows.
- Recycling: with MAX_TASKS (attempts per slot process, 0 = no limit) or
  MAX_MEMORY (bytes of resident memory, read from ``/proc/PID/statm`` after
  each attempt; 0 = no limit), a slot over its limit is retired after sending
  its result (it exits when its task pipe closes) and a fresh one is forked:
  nothing queued is lost and nothing is reported.
- Functions are cached by ``fn_id`` in the agent (bytes) and in each slot
  (unpickled, and their bytes: one that fails to load fails each call to it); a slot
  receives the bytes with the first task that uses them.
  The caches are bounded in lockstep with the controller's LRU: the agent
  keeps what it is sent and drops what an EVICT names (see ``_wire``).
- Large arguments arrive as blobs (BLOB frames, see ``_wire`` and ``remote/_blobs.py``):
  the agent keeps their bytes by digest, in lockstep with the controller like functions;
  each slot unpickles a blob once, when it first runs a task that uses it, and hands the
  same (read-only where numpy allows) object to later tasks (the "blobs" sections below).
- Protocol errors: a frame from the controller that does not match its
  declared parts is answered with an ERROR frame naming it; the agent then
  writes the reason on stderr and exits with status 2. A slot that gets a
  short or corrupt task frame reports the attempt LOST with the reason.
- Slots' standard output goes to a pipe the agent reads and forwards as
  OUTPUT frames (the controller prints it on its stdout, prefixed with the
  host's name); it is drained before each RESULT so a task's output arrives
  before its result. Slots' stderr is the agent's stderr.
- When stdin reaches EOF (controller gone, connection cut, channel closed),
  on SHUTDOWN, SIGTERM or SIGHUP the agent kills every slot's process group,
  removes its private temp dir and exits at once, even mid-task. SIGINT is
  ignored. Slots also get SIGKILL if the agent dies (Linux PDEATHSIG).
- No orphans after a partition: with a silence limit (third argument,
  seconds; 0 = none), the agent does the same, exiting with status 3 and a
  line on stderr, when nothing has arrived from the controller for longer
  than the limit (the controller pings well within it) and the controller
  has not taken any of the agent's output either.
- Slots run with ``TMPDIR`` set to the agent's private temp dir (mode 0700),
  so temp files made by tasks are removed with it.
- Process titles: ``parallelize-agent NAME`` and ``parallelize-slot NAME``
  (on Linux: the kernel's comm name, which ``ps -o comm`` shows, and the
  command line; not setproctitle, which overwrites the environment).
"""

from __future__ import annotations

import contextlib
import enum
import os
import pickle
import select
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from parallelize.ext import outcome_codec as _outcome
    from remote import _wire
else:  # shipped by a link: the bootstrap registered these modules under these names
    _wire = sys.modules.get("parallelize_agent_wire")
    if _wire is None:
        from remote import _wire
    _outcome = sys.modules.get("parallelize_agent_outcome")
    if _outcome is None:
        from parallelize.ext import outcome_codec as _outcome

__all__ = ["main", "resolve_blob"]

_TMP_PREFIX = "parallelize-agent-"
_READ_SIZE = 1 << 20
_OUTPUT_CHUNK = 1 << 16  # bytes of task stdout per OUTPUT frame
_EXIT_PROTOCOL = 2  # the controller sent a frame the agent could not accept
_EXIT_SILENCE = 3  # the controller was silent for longer than the limit
_EXIT_SLOT_PROTOCOL = 65  # a slot got a short or corrupt task frame (EX_DATAERR)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


_PIPE_SIZE = 1 << 20


def _grow_pipes(*fds: int) -> None:
    """Make pipes hold 1 MiB (Linux; the default is 64 KiB): a 50 MB result then crosses in
    50 wake-ups of reader and writer instead of 800, which on a busy machine is most of its
    cost. Best effort: sockets, other systems and a lower pipe-max-size keep the default."""
    setpipe = getattr(__import__("fcntl"), "F_SETPIPE_SZ", None)
    if setpipe is None:
        return
    import fcntl

    for fd in fds:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setpipe, _PIPE_SIZE)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"
    if os.WIFEXITED(status):
        return f"process exited with code {os.WEXITSTATUS(status)}"
    return f"process ended with status {status}"


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _set_pdeathsig() -> None:
    """Ask Linux to SIGKILL this process when its parent (the agent) dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        _libc().prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def _set_title(title: str) -> None:
    """Make this process recognisable in ``ps``/``top``; best effort, never fails.

    Not with setproctitle, even where the host has it: to make room for a long title it
    moves the environment and writes over it, and ``/proc/PID/environ`` is how operators
    (and our tests) tell which processes a host runs for whom."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        _libc().prctl(15, title.encode()[:15], 0, 0, 0)  # PR_SET_NAME: /proc/PID/comm
    with contextlib.suppress(Exception):
        _set_cmdline(title)


_title_area: list[int] = []  # [start, size] of the argument area once we own it


def _set_cmdline(title: str) -> None:
    """Overwrite this process's argument area (what /proc/PID/cmdline and ``ps -f`` show).

    The first time, only when the memory at the kernel's arg_start holds exactly the current
    command line, so a surprise (another runtime, a kernel without those fields) changes
    nothing; forked slots inherit the area. The last byte of the area is made non-NUL: the
    kernel then reports the area up to the first NUL, i.e. the title alone (the convention
    setproctitle(3) relies on).
    """
    import ctypes

    if not _title_area:
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        # Fields 48/49 of stat (arg_start, arg_end), counted after "pid (comm)" as 3.. -> 45/46.
        start, end = int(fields[45]), int(fields[46])
        with open("/proc/self/cmdline", "rb") as handle:
            current = handle.read()
        size = end - start
        if start <= 0 or size < 2 or size != len(current):
            return
        if ctypes.string_at(start, size) != current:
            return
        _title_area[:] = [start, size]
    start, size = _title_area
    text = title.encode("utf-8", "replace")[: size - 2]
    ctypes.memmove(start, text + b"\0" * (size - len(text) - 1) + b" ", size)


def _remove_stale_dirs() -> None:
    """Remove temp dirs of agents of this user that died without cleaning up (SIGKILL)."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    uid = os.getuid()
    for entry in names:
        if not entry.startswith(_TMP_PREFIX):
            continue
        path = os.path.join(base, entry)
        try:
            pid = int(entry[len(_TMP_PREFIX) :].split("-", 1)[0])
            if os.lstat(path).st_uid != uid:
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, OSError):
            continue


class SlotState(enum.Enum):
    """A slot process's life, as the agent sees it (``_Slot.move`` checks each step)."""

    IDLE = "idle"  # waiting for a task
    RUNNING = "running"  # its task was sent
    KILLED = "killed"  # its task was cancelled: process group killed, not reaped yet
    RETIRED = "retired"  # told to exit (no longer needed) or killed for a bad frame
    GONE = "gone"  # reaped


_SLOT_MOVES = {
    SlotState.IDLE: (SlotState.RUNNING, SlotState.RETIRED, SlotState.GONE),
    SlotState.RUNNING: (SlotState.IDLE, SlotState.KILLED, SlotState.RETIRED, SlotState.GONE),
    SlotState.KILLED: (SlotState.GONE,),
    SlotState.RETIRED: (SlotState.GONE,),
    SlotState.GONE: (),
}


class _Slot:
    __slots__ = (
        "attempt",
        "blob_drop",
        "blobs",
        "deadline",
        "evict",
        "fns",
        "frames",
        "lost_reason",
        "out_fd",
        "out_pending",
        "pid",
        "result_fd",
        "state",
        "task_fd",
        "tasks",
    )

    def __init__(self, pid: int, task_fd: int, result_fd: int, out_fd: int) -> None:
        self.pid = pid
        self.out_fd = out_fd  # slot -> agent: the task's stdout (its own pipe: lines of
        # tasks on different slots must not interleave)
        self.out_pending = bytearray()  # a partial line, until its end or the task's
        self.task_fd = task_fd  # agent -> slot: EVICT and SUBMIT frames
        self.result_fd = result_fd  # slot -> agent: RESULT (or LOST) frames
        self.frames = _wire.FrameBuffer()
        self.attempt: int | None = None
        self.state = SlotState.IDLE
        self.fns: set[int] = set()  # function ids the slot has unpickled
        self.evict: list[int] = []  # ids evicted since, to send before its next SUBMIT
        self.lost_reason: str | None = None  # why the agent killed it, if it did
        self.blobs: set[bytes] = set()  # digests of the blobs the slot holds
        self.blob_drop: list[bytes] = []  # to drop, sent before its next SUBMIT
        self.deadline: tuple[float, float] | None = None  # (started, expires) of a timed task
        self.tasks = 0  # attempts it has finished (for max_tasks recycling)

    def move(self, new: SlotState) -> None:
        if new not in _SLOT_MOVES[self.state]:  # a bug in the agent, never silenced
            raise RuntimeError(f"slot {self.pid}: {self.state.name} -> {new.name}")
        self.state = new

    @property
    def live(self) -> bool:
        return self.state in (SlotState.IDLE, SlotState.RUNNING)


class Agent:
    def __init__(
        self,
        name: str,
        slots: int,
        silence_limit: float = 0.0,
        max_tasks: int = 0,
        max_memory: int = 0,
        compress_results: bool = False,
    ) -> None:
        self.name = name
        self.target_slots = max(1, slots)
        self.silence_limit = max(0.0, silence_limit)
        self.max_tasks = max(0, max_tasks)  # attempts per slot process (0: no limit)
        self.max_memory = max(0, max_memory)  # resident bytes per slot process (0: no limit)
        # Time limits from TIME_LIMIT frames: attempt id -> seconds, until the attempt ends.
        self.limits: dict[int, float] = {}
        self.hostname = socket.gethostname()
        # Whether slots may send RESULT_ZSTD (the controller reads them and said so at start).
        self.compress_results = compress_results and _zstd_version() is not None
        # The protocol gets private copies of fds 0 and 1; fd 0 becomes /dev/null and fd 1
        # goes to stderr, so stray prints here cannot corrupt the stream. Each slot gets fd 1
        # on a pipe of its own, whose lines travel as OUTPUT frames.
        self.in_fd = os.dup(0)
        self.out_fd = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(2, 1)
        os.close(devnull)
        os.set_inheritable(self.in_fd, False)
        os.set_inheritable(self.out_fd, False)
        _grow_pipes(self.in_fd, self.out_fd)
        # Function payloads by id, mirroring the controller's LRU (see _wire).
        self.fn_cache: dict[int, bytes] = {}
        self.fn_bytes = 0
        self.children: dict[int, _Slot] = {}  # pid -> slot, until reaped
        self.by_fd: dict[int, _Slot] = {}  # result fd -> slot
        self.by_out_fd: dict[int, _Slot] = {}  # stdout fd -> slot
        self.idle: list[_Slot] = []
        self.running: dict[int, _Slot] = {}  # attempt id -> slot
        # Attempts submitted while every slot is busy, in order: attempt id -> (fn_id, fn,
        # args). The function bytes are held here: an EVICT may drop them from the cache.
        self.queue: dict[int, tuple[int, bytes, bytes]] = {}
        # Blobs by digest, mirroring the controller's BlobLRU (see _wire, remote/_blobs.py).
        self.blobs: dict[bytes, bytes | memoryview] = {}
        self.blob_use: dict[int, list[bytes]] = {}  # from BLOB_USE, until its SUBMIT
        # The blobs each submitted, not yet started attempt needs (held here: a BLOB_DROP
        # may drop them from the cache while the attempt waits for a slot).
        self.attempt_blobs: dict[int, list[tuple[bytes, bytes | memoryview]]] = {}
        self.tmpdir = ""
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.frames = _wire.FrameBuffer()
        self.closing = False
        self.failing = False  # exiting on a protocol error: a failed write must not exit 0
        # Last sign of life of the controller: bytes from it, or it taking ours.
        self.last_heard = time.monotonic()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        _set_title(f"parallelize-agent {self.name}")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGHUP, self._on_term)
        info: dict[str, Any] = {
            "python": ".".join(str(part) for part in sys.version_info[:3]),
            "executable": sys.executable,
            "pid": os.getpid(),
            "hostname": self.hostname,
            "platform": sys.platform,
            "cloudpickle": None,
            "error": None,
            "tmpdir": None,
            "zstd": _zstd_version(),
            "protocol": _wire.PROTOCOL,
        }
        try:
            import cloudpickle

            info["cloudpickle"] = getattr(cloudpickle, "__version__", "unknown")
        except Exception as exc:
            info["error"] = f"cannot import cloudpickle: {type(exc).__name__}: {exc}"
        if not hasattr(os, "fork"):
            info["error"] = "the worker agent needs a POSIX host (os.fork is missing)"
        if info["error"] is None:
            _remove_stale_dirs()
            self.tmpdir = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-")
            info["tmpdir"] = self.tmpdir
        _write_all(self.out_fd, _wire.MAGIC + _wire.encode_hello(info))
        if info["error"] is not None:
            os._exit(1)
        # Non-blocking from here on: a write to a stalled controller must not block past
        # the silence limit (see _send).
        for fd in (self.wake_r, self.wake_w, self.out_fd):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.selector.register(self.in_fd, selectors.EVENT_READ, None)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.last_heard = time.monotonic()
        for _ in range(self.target_slots):
            self.idle.append(self._fork_slot())

    def _on_term(self, signum: int, frame: Any) -> None:
        self.shutdown()

    def shutdown(self, code: int = 0) -> NoReturn:
        """Kill every slot's process group, remove the temp dir, exit. Never returns."""
        self.closing = True
        for slot in list(self.children.values()):
            with contextlib.suppress(OSError):
                os.killpg(slot.pid, signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        os._exit(code)

    def _fail(self, code: int, message: str) -> NoReturn:
        """Exit with *code* after one line on stderr. Never returns."""
        line = f"parallelize agent {self.name!r} (pid {os.getpid()}): {message}\n"
        with contextlib.suppress(OSError):
            os.set_blocking(2, False)  # a stalled stderr channel must not keep us alive
            os.write(2, line.encode("utf-8", "replace"))
        self.shutdown(code)

    def _check_silence(self) -> float | None:
        """Seconds left before the silence limit (None: no limit); exits when it is over."""
        if not self.silence_limit:
            return None
        silent = time.monotonic() - self.last_heard
        if silent > self.silence_limit:
            self._fail(
                _EXIT_SILENCE,
                f"nothing heard from the controller for {silent:.1f} s (limit "
                f"{self.silence_limit:g} s): it is gone or the network is cut; killing "
                f"{len(self.children)} slot process(es) and exiting",
            )
        return self.silence_limit - silent

    def run(self) -> None:
        while True:
            left = self._check_silence()
            timeout = 5.0 if left is None else min(5.0, left + 0.01)
            expires = self._next_expiry()
            if expires is not None:
                timeout = max(0.0, min(timeout, expires - time.monotonic()))
            for key, _ in self.selector.select(timeout=timeout):
                if key.fd == self.in_fd:
                    self._read_controller()
                elif key.fd == self.wake_r:
                    with contextlib.suppress(OSError):
                        while os.read(self.wake_r, 512):
                            pass
                    self._reap(block=False)
                else:
                    slot = self.by_fd.get(key.fd)
                    if slot is not None:
                        self._read_slot(slot)
                    elif (slot := self.by_out_fd.get(key.fd)) is not None:
                        self._pump_stdout(slot, reads=1)
            self._reap(block=False)
            if expires is not None:
                self._expire()

    # -- controller side -----------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        view = memoryview(frame)
        while view:
            try:
                written = os.write(self.out_fd, view)
            except BlockingIOError:
                written = 0
            except OSError:
                if self.failing:
                    raise
                self.shutdown()  # the controller's end is closed: it is gone
            if written:
                view = view[written:]
                self.last_heard = time.monotonic()  # it takes our output: it is alive
                continue
            left = self._check_silence()
            select.select([], [self.out_fd], [], left)

    def _protocol_error(self, message: str) -> None:
        """Answer a bad frame with ERROR, say why on stderr, exit non-zero. Never returns."""
        self.failing = True
        with contextlib.suppress(OSError):
            self._send(_wire.encode_error(message))
        self._fail(_EXIT_PROTOCOL, f"protocol error: {message}; exiting")

    def _read_controller(self) -> None:
        try:
            data = os.read(self.in_fd, _READ_SIZE)
        except BlockingIOError:  # fd 0 may share a non-blocking socket with fd 1
            return
        except OSError:
            data = b""
        if not data:
            self.shutdown()
        self.last_heard = time.monotonic()
        try:
            for kind, body in self.frames.feed(data):
                self._handle(kind, body)
        except _wire.ProtocolError as exc:
            self._protocol_error(str(exc))

    def _handle(self, kind: int, body: bytes) -> None:
        if kind == _wire.SUBMIT:
            self._submit(body)
        elif kind == _wire.CANCEL:
            self._cancel(_wire.decode_cancel(body))
        elif kind == _wire.PING:
            self._send(_wire.encode_pong(_wire.decode_ping(body)))
        elif kind == _wire.EVICT:
            self._evict(_wire.decode_evict(body))
        elif kind == _wire.TIME_LIMIT:
            attempt_id, seconds = _wire.decode_time_limit(body)
            self.limits[attempt_id] = seconds
        elif kind == _wire.SHUTDOWN:
            _wire.decode_shutdown(body)
            self.shutdown()
        elif kind in (_wire.BLOB, _wire.BLOB_DROP, _wire.BLOB_USE):
            self._blob_frame(kind, body)
        else:
            raise _wire.ProtocolError(
                f"unexpected {_wire.message_name(kind)} frame ({len(body)} bytes) "
                "from the controller"
            )

    def _submit(self, body: bytes) -> None:
        attempt_id, fn_id, fn, args = _wire.decode_submit(body)
        needs = self.blob_use.pop(attempt_id, None)
        if needs:
            self.attempt_blobs[attempt_id] = [(d, self.blobs[d]) for d in needs]
        if fn is not None:
            self._cache(fn_id, fn)
        else:
            fn = self.fn_cache.get(fn_id)
            if fn is None:
                raise _wire.ProtocolError(
                    f"SUBMIT of attempt {attempt_id} without a function names id {fn_id}, "
                    "which the agent does not have (the function caches are out of step)"
                )
        if not self.idle and self._live_slots() >= self.target_slots:
            self.queue[attempt_id] = (fn_id, fn, args)  # starts when a slot frees up
            return
        slot = self.idle.pop() if self.idle else self._fork_slot()
        self._start(slot, attempt_id, fn_id, fn, args)

    def _cache(self, fn_id: int, fn: bytes) -> None:
        old = self.fn_cache.get(fn_id)
        self.fn_bytes += len(fn) - (len(old) if old is not None else 0)
        self.fn_cache[fn_id] = fn
        count = len(self.fn_cache)
        if count > 1 and (
            count > _wire.FN_CACHE_MAX_COUNT or self.fn_bytes > _wire.FN_CACHE_MAX_BYTES
        ):
            raise _wire.ProtocolError(
                f"SUBMIT of function {fn_id} grows the agent's function cache to {count} "
                f"functions / {self.fn_bytes} bytes, above the limit of "
                f"{_wire.FN_CACHE_MAX_COUNT} / {_wire.FN_CACHE_MAX_BYTES}: the controller "
                "did not evict (the function caches are out of step)"
            )

    def _evict(self, fn_ids: list[int]) -> None:
        for fn_id in fn_ids:
            fn = self.fn_cache.pop(fn_id, None)
            if fn is None:
                raise _wire.ProtocolError(
                    f"EVICT names function {fn_id}, which the agent does not have "
                    "(the function caches are out of step)"
                )
            self.fn_bytes -= len(fn)
            for slot in self.children.values():
                if fn_id in slot.fns:
                    slot.fns.discard(fn_id)
                    slot.evict.append(fn_id)

    def _start(self, slot: _Slot, attempt_id: int, fn_id: int, fn: bytes, args: bytes) -> None:
        slot.attempt = attempt_id
        slot.move(SlotState.RUNNING)
        limit = self.limits.get(attempt_id)
        slot.deadline = None
        if limit is not None:
            now = time.monotonic()
            slot.deadline = (now, now + limit)
        self.running[attempt_id] = slot
        frame = _wire.encode_submit(attempt_id, fn_id, None if fn_id in slot.fns else fn, args)
        if slot.evict:
            frame = _wire.encode_evict(slot.evict) + frame
            slot.evict = []
        if fn_id in self.fn_cache:
            slot.fns.add(fn_id)
        else:  # evicted while the attempt was queued: the slot drops it again next time
            slot.evict.append(fn_id)
        with contextlib.suppress(OSError):  # a dead slot's reaping reports the attempt lost
            self._blobs_to_slot(slot, self.attempt_blobs.pop(attempt_id, ()))
            _write_all(slot.task_fd, frame)

    def _cancel(self, attempt_id: int) -> None:
        self.attempt_blobs.pop(attempt_id, None)
        self.limits.pop(attempt_id, None)
        if self.queue.pop(attempt_id, None) is not None:
            return
        slot = self.running.pop(attempt_id, None)
        if slot is None:
            return  # finished already (its result is on the way) or never known
        slot.move(SlotState.KILLED)
        with contextlib.suppress(OSError):
            os.killpg(slot.pid, signal.SIGKILL)
        self._replenish()

    def _next_expiry(self) -> float | None:
        if not self.limits:
            return None
        ends = [s.deadline[1] for s in self.running.values() if s.deadline is not None]
        return min(ends) if ends else None

    def _expire(self) -> None:
        """Kill the attempts past their time limit and say so (TIMED_OUT); replace their slots."""
        now = time.monotonic()
        expired = [
            (attempt_id, slot)
            for attempt_id, slot in self.running.items()
            if slot.deadline is not None and slot.deadline[1] <= now
        ]
        for attempt_id, slot in expired:
            self._drain(slot)  # a result that made it in time still counts
            if self.running.get(attempt_id) is not slot:
                continue
            del self.running[attempt_id]
            self.limits.pop(attempt_id, None)
            started = slot.deadline[0] if slot.deadline is not None else now
            slot.move(SlotState.KILLED)
            with contextlib.suppress(OSError):
                os.killpg(slot.pid, signal.SIGKILL)
            self._pump_stdout(slot, reads=16, final=True)  # what it printed, before the verdict
            self._send(_wire.encode_timed_out(attempt_id, now - started))
        if expired:
            self._replenish()

    def _worn_out(self, slot: _Slot) -> bool:
        """Whether a slot that just finished an attempt is due for recycling."""
        if self.max_tasks and slot.tasks >= self.max_tasks:
            return True
        return bool(self.max_memory) and _resident_bytes(slot.pid) > self.max_memory

    def _pump_stdout(self, slot: _Slot, *, reads: int, final: bool = False) -> None:
        """Forward the complete lines a slot's task printed as OUTPUT frames; with *final*
        (its task ended), the partial last line too.

        Bounded: at most *reads* chunks are read, a partial line is kept up to one chunk,
        and a task printing faster than the controller takes it blocks on its full pipe."""
        pending = slot.out_pending
        for _ in range(reads):
            if slot.out_fd < 0:
                break
            try:
                data = os.read(slot.out_fd, _OUTPUT_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                break
            pending += data
        cut = pending.rfind(b"\n") + 1
        if final or len(pending) >= _OUTPUT_CHUNK:
            cut = len(pending)
        if cut:
            self._send(_wire.encode_output(_wire.STDOUT, bytes(pending[:cut])))
            del pending[:cut]

    def _close_stdout(self, slot: _Slot) -> None:
        if slot.out_fd >= 0:
            self.by_out_fd.pop(slot.out_fd, None)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(slot.out_fd)
            with contextlib.suppress(OSError):
                os.close(slot.out_fd)
            slot.out_fd = -1

    # -- blobs (content-addressed objects; see _wire and remote/_blobs.py) -----------------

    def _blob_frame(self, kind: int, body: bytes) -> None:
        """Lockstep with the controller's BlobLRU: keep what BLOB sends, drop what BLOB_DROP
        names; a BLOB_USE or BLOB_DROP naming a blob the agent lacks means the two sides are
        out of step (a protocol error)."""
        if kind == _wire.BLOB:
            digest, codec, raw_len, data = _wire.decode_blob(body)
            self.blobs[digest] = _unpack_blob(codec, raw_len, data)
        elif kind == _wire.BLOB_DROP:
            for digest in _wire.decode_blob_drop(body):
                if self.blobs.pop(digest, None) is None:
                    raise _wire.ProtocolError(
                        f"BLOB_DROP names blob {digest.hex()[:12]}, which the agent does not "
                        "have (the blob caches are out of step)"
                    )
                for slot in self.children.values():
                    if digest in slot.blobs:
                        slot.blobs.discard(digest)
                        slot.blob_drop.append(digest)
        else:
            attempt_id, digests = _wire.decode_blob_use(body)
            missing = [d.hex()[:12] for d in digests if d not in self.blobs]
            if missing:
                raise _wire.ProtocolError(
                    f"BLOB_USE of attempt {attempt_id} names blob(s) {', '.join(missing)}, "
                    "which the agent does not have (the blob caches are out of step)"
                )
            self.blob_use[attempt_id] = digests

    def _blobs_to_slot(self, slot: _Slot, blobs: Any) -> None:
        """Before a SUBMIT: the drops pending for the slot, then the blobs it lacks (raw)."""
        if slot.blob_drop:
            _write_all(slot.task_fd, _wire.encode_blob_drop(slot.blob_drop))
            slot.blob_drop = []
        for digest, data in blobs:
            if digest in slot.blobs:
                continue
            head = _wire.encode_blob_head(digest, _wire.BLOB_RAW, len(data), len(data))
            _write_all(slot.task_fd, head)
            _write_all(slot.task_fd, data)
            if digest in self.blobs:
                slot.blobs.add(digest)
            else:  # dropped while the attempt was queued: the slot drops it next time
                slot.blob_drop.append(digest)

    # -- slots ---------------------------------------------------------------------------

    def _live_slots(self) -> int:
        return sum(1 for s in self.children.values() if s.live)

    def _replenish(self) -> None:
        while self._live_slots() < self.target_slots:
            self.idle.append(self._fork_slot())
        self._dequeue()

    def _dequeue(self) -> None:
        while self.queue and self.idle:
            attempt_id = next(iter(self.queue))
            fn_id, fn, args = self.queue.pop(attempt_id)
            self._start(self.idle.pop(), attempt_id, fn_id, fn, args)

    def _fork_slot(self) -> _Slot:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        _grow_pipes(task_w, result_w)
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the slot process
            code = 70
            try:
                os.close(task_w)  # the agent's ends: else this slot never sees EOF
                os.close(result_r)
                os.close(out_r)
                self._become_slot(task_r, result_w, out_w)
                code = _slot_loop(task_r, result_w, self.compress_results)
            except BaseException:
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
            finally:
                os._exit(code)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        os.close(task_r)
        os.close(result_w)
        os.close(out_w)
        os.set_blocking(result_r, False)
        os.set_blocking(out_r, False)
        slot = _Slot(pid, task_w, result_r, out_r)
        self.children[pid] = slot
        self.by_fd[result_r] = slot
        self.by_out_fd[out_r] = slot
        self.selector.register(result_r, selectors.EVENT_READ, None)
        self.selector.register(out_r, selectors.EVENT_READ, None)
        return slot

    def _become_slot(self, task_r: int, result_w: int, out_w: int) -> None:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _set_pdeathsig()
        agent_pid = os.getppid()
        with contextlib.suppress(OSError):
            self.selector.close()
        os.dup2(out_w, 1)  # the task's stdout: forwarded as OUTPUT frames
        os.set_blocking(1, True)
        fds = [self.in_fd, self.out_fd, self.wake_r, self.wake_w, out_w]
        for other in self.children.values():
            fds += [other.task_fd, other.result_fd, other.out_fd]
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if os.getppid() != agent_pid:
            os._exit(0)
        _set_title(f"parallelize-slot {self.name}")
        with contextlib.suppress(Exception):  # prints show up as they happen
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        os.environ["TMPDIR"] = self.tmpdir
        tempfile.tempdir = self.tmpdir

    def _read_slot(self, slot: _Slot) -> None:
        if self._drain(slot):
            self._slot_eof(slot)

    def _drain(self, slot: _Slot) -> bool:
        """Read what the slot wrote and handle its results; True at EOF."""
        while True:
            try:
                data = os.read(slot.result_fd, _READ_SIZE)
            except BlockingIOError:
                return False
            except OSError:
                data = b""
            if not data:
                return True
            try:
                for kind, body in slot.frames.feed(data):
                    if kind in (_wire.RESULT, _wire.RESULT_ZSTD):
                        _wire.decode_result(body)  # checks the fixed part
                        self._slot_result(slot, kind, body)
                    elif kind == _wire.LOST:
                        self._slot_lost(slot, _wire.decode_lost(body)[1])
                    else:
                        raise _wire.ProtocolError(
                            f"unexpected {_wire.message_name(kind)} frame from the slot"
                        )
            except _wire.ProtocolError as exc:
                # Its stream cannot be trusted any more: the slot goes, its attempt is lost.
                slot.lost_reason = f"protocol error in the slot's output: {exc}"
                with contextlib.suppress(OSError):
                    os.killpg(slot.pid, signal.SIGKILL)
                return True

    def _close_result(self, slot: _Slot) -> None:
        if slot.result_fd in self.by_fd:
            del self.by_fd[slot.result_fd]
            self.selector.unregister(slot.result_fd)
            os.close(slot.result_fd)

    def _slot_result(self, slot: _Slot, kind: int, body: bytes) -> None:
        attempt_id = slot.attempt
        slot.attempt = None
        if slot.state is not SlotState.RUNNING or attempt_id is None:
            return  # killed (cancelled): its result is not wanted
        self.running.pop(attempt_id, None)
        self.limits.pop(attempt_id, None)
        slot.deadline = None
        slot.tasks += 1
        self._pump_stdout(slot, reads=16, final=True)  # the task's output before its result
        self._send(_wire.HEADER.pack(len(body) + 1, kind))
        self._send(body)  # apart: a large result is not copied once more
        if len(self.idle) >= self.target_slots or slot.pid not in self.children:
            self._retire(slot)
        elif self._worn_out(slot):
            self._retire(slot)  # it exits once its task pipe closes; a fresh one takes over
            self._replenish()
        else:
            slot.move(SlotState.IDLE)
            self.idle.append(slot)
            self._dequeue()

    def _slot_lost(self, slot: _Slot, reason: str) -> None:
        """The slot rejected its task frame: it goes (it would exit anyway) and is replaced."""
        attempt_id = slot.attempt
        slot.attempt = None
        wanted = slot.state is SlotState.RUNNING
        if slot.live:
            slot.move(SlotState.RETIRED)
        with contextlib.suppress(OSError):
            os.killpg(slot.pid, signal.SIGKILL)
        if slot in self.idle:
            self.idle.remove(slot)
        if attempt_id is not None and wanted:
            self.running.pop(attempt_id, None)
            self.limits.pop(attempt_id, None)
            self._send(_wire.encode_lost(attempt_id, reason))

    def _retire(self, slot: _Slot) -> None:
        slot.move(SlotState.RETIRED)
        with contextlib.suppress(OSError):
            os.close(slot.task_fd)  # the slot reads EOF and exits
        slot.task_fd = -1

    def _slot_eof(self, slot: _Slot) -> None:
        self._close_result(slot)
        # The pipe closes a moment before the process can be waited for.
        deadline = time.monotonic() + 0.5
        while slot.pid in self.children and not self._reap_one(slot, block=False):
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.killpg(slot.pid, signal.SIGKILL)
                self._reap_one(slot, block=True)
            else:
                time.sleep(0.0005)

    def _reap(self, block: bool) -> None:
        for slot in list(self.children.values()):
            self._reap_one(slot, block)

    def _reap_one(self, slot: _Slot, block: bool) -> bool:
        try:
            pid, status = os.waitpid(slot.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = slot.pid, 0
        if pid == 0:
            return False
        self.children.pop(slot.pid, None)
        if slot.result_fd in self.by_fd:
            self._drain(slot)  # a result written just before dying still counts
            self._close_result(slot)
        if slot.task_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(slot.task_fd)
            slot.task_fd = -1
        if slot in self.idle:
            self.idle.remove(slot)
        attempt_id = slot.attempt
        wanted = slot.state is SlotState.RUNNING
        if slot.state is not SlotState.GONE:
            slot.move(SlotState.GONE)
        if attempt_id is not None and wanted:
            self.running.pop(attempt_id, None)
            self.limits.pop(attempt_id, None)
            self._pump_stdout(slot, reads=16, final=True)  # its last words, before the loss
            self._send(_wire.encode_lost(attempt_id, slot.lost_reason or _describe_status(status)))
        self._close_stdout(slot)
        if not self.closing:
            self._replenish()
        return True


def _resident_bytes(pid: int) -> int:
    """Resident memory of a process (Linux ``/proc/PID/statm``); 0 where unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# -- inside a slot process ----------------------------------------------------------------


# Idle after a call that may have grown it (large arguments or result, or one that ran a
# while), a slot that grew since it last did so collects garbage and trims the C heap:
# glibc keeps freed memory otherwise (all of it, when a few objects made during the call
# stay alive), and a slot would hold its largest call's footprint for its whole life. As
# PROCESS workers do (parallelize/_process/_memory.py); not after small calls.
_HEAVY_BYTES = 1 << 20
_HEAVY_SECONDS = 0.001
_GROWTH = 8 << 20  # bytes of resident growth worth a collection (it costs milliseconds)
_trim: Any = None
_baseline: int | None = None


def _release_memory_if_grown() -> None:
    global _baseline
    rss = _resident_bytes(os.getpid())
    if _baseline is None or rss < _baseline:
        _baseline = rss
    if rss - _baseline < _GROWTH:
        return
    _release_memory()
    _baseline = _resident_bytes(os.getpid())


def _release_memory() -> None:
    global _trim
    import gc

    gc.collect()
    if _trim is None:
        _trim = False
        with contextlib.suppress(Exception):  # not glibc: garbage collection only
            trim = _libc().malloc_trim
            import ctypes

            trim.argtypes = [ctypes.c_size_t]
            trim.restype = ctypes.c_int
            _trim = trim
    if _trim:
        _trim(0)


def _read_exact(fd: int, n: int) -> bytes:
    """*n* bytes, or fewer if the pipe closes first."""
    chunks = []
    while n:
        chunk = os.read(fd, min(n, _READ_SIZE))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _task_frame_error(result_fd: int, reason: str) -> int:
    """Report the slot's current attempt lost (the agent knows which) -> the exit code."""
    message = f"protocol error in the task frame sent to the slot: {reason}"
    with contextlib.suppress(OSError):
        _write_all(result_fd, _wire.encode_lost(0, message))
    return _EXIT_SLOT_PROTOCOL


def _slot_loop(task_fd: int, result_fd: int, compress: bool) -> int:
    fns: dict[int, Any] = {}  # loaded functions by id
    # Their pickles, kept until evicted: one that fails to load fails each call to it (the
    # agent sends a function's bytes to a slot once), as in PROCESS workers.
    fn_bytes: dict[int, bytes] = {}
    heavy = False  # a large call ran since the slot last gave memory back
    _release_memory_if_grown()  # records the fresh slot's size
    # Blob references in arguments unpickle through this module (see resolve_blob), by the
    # name the bootstrap gives it; an agent started by hand registers that name here.
    sys.modules.setdefault("parallelize_agent", sys.modules[__name__])
    while True:
        head = _read_exact(task_fd, 5)
        if not head:
            return 0  # the agent closed the pipe: this slot is retired
        if len(head) < 5:
            return _task_frame_error(result_fd, f"a {len(head)}-byte frame header")
        length, kind = _wire.HEADER.unpack(head)
        if length < 1:
            return _task_frame_error(result_fd, "a frame of length zero")
        body = _read_exact(task_fd, length - 1)
        if len(body) != length - 1:
            return _task_frame_error(
                result_fd,
                f"a short {_wire.message_name(kind)} frame: {len(body)} of its "
                f"{length - 1} bytes arrived before the pipe closed",
            )
        try:
            if kind == _wire.EVICT:
                for fn_id in _wire.decode_evict(body):
                    fns.pop(fn_id, None)
                    fn_bytes.pop(fn_id, None)
                continue
            if kind in (_wire.BLOB, _wire.BLOB_DROP):
                _slot_blob_frame(kind, body)
                continue
            if kind != _wire.SUBMIT:
                raise _wire.ProtocolError(f"unexpected {_wire.message_name(kind)} frame")
            attempt_id, fn_id, fn_payload, args_payload = _wire.decode_submit(body)
            if fn_payload is not None:
                fn_bytes[fn_id] = fn_payload
            elif fn_id not in fn_bytes:
                raise _wire.ProtocolError(
                    f"SUBMIT of attempt {attempt_id} names function {fn_id} without sending "
                    "it, and the slot does not have it"
                )
        except _wire.ProtocolError as exc:
            return _task_frame_error(result_fd, str(exc))
        began = time.perf_counter()
        frame = _run(attempt_id, fn_id, args_payload, fns, fn_bytes, compress)
        heavy = heavy or time.perf_counter() - began >= _HEAVY_SECONDS
        for stream in (sys.stdout, sys.stderr):  # the task's output before its result
            with contextlib.suppress(BaseException):
                stream.flush()
        _write_all(result_fd, frame)
        heavy = heavy or len(body) >= _HEAVY_BYTES or len(frame) >= _HEAVY_BYTES
        body = frame = args_payload = b""
        fn_payload = None
        if heavy and not select.select([task_fd], [], [], 0)[0]:
            heavy = False  # idle after a large call: give the memory back (see _release_memory)
            _release_memory_if_grown()


# -- blobs in a slot ----------------------------------------------------------------------
#
# A slot unpickles each blob once, when the agent sends it, and keeps the object until the
# agent forwards a BLOB_DROP: calls on this slot then get the same object (measured: for a
# 50 MB array, unpickling costs about as much as the pipe transfer, on every call, while a
# cached object costs nothing). Shared state between calls is the price: numpy arrays are
# made read-only, other objects must be treated as read-only by tasks (README).

_slot_blobs: dict[bytes, Any] = {}


class _BlobFailure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _zstd_version() -> str | None:
    try:
        import zstandard
    except ImportError:
        return None
    return str(getattr(zstandard, "__version__", "unknown"))


def _unpack_blob(codec: int, raw_len: int, data: memoryview) -> bytes | memoryview:
    """The raw bytes of a BLOB's data: a view into the frame (no copy) unless compressed."""
    if codec == _wire.BLOB_RAW:
        return data
    try:
        import zstandard
    except ImportError:
        raise _wire.ProtocolError(
            "a zstd-compressed BLOB, but this agent has no zstandard (it said so at HELLO)"
        ) from None
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise _wire.ProtocolError(f"a BLOB that does not decompress: {exc}") from None
    if len(raw) != raw_len:
        raise _wire.ProtocolError(f"a BLOB of {len(raw)} bytes decompressed, declared {raw_len}")
    return bytes(raw)


def _slot_blob_frame(kind: int, body: bytes) -> None:
    if kind == _wire.BLOB_DROP:
        for digest in _wire.decode_blob_drop(body):
            _slot_blobs.pop(digest, None)
        return
    digest, codec, raw_len, data = _wire.decode_blob(body)
    try:
        value = pickle.loads(_unpack_blob(codec, raw_len, data))
    except BaseException as exc:  # reported by the task that uses it
        _slot_blobs[digest] = _BlobFailure(exc)
        return
    if type(value).__module__ == "numpy" and hasattr(value, "setflags"):
        with contextlib.suppress(Exception):
            value.setflags(write=False)
    _slot_blobs[digest] = value


def resolve_blob(digest: bytes) -> Any:
    """The object of a blob this slot holds (what a ``BlobRef`` in the arguments unpickles to)."""
    try:
        value = _slot_blobs[digest]
    except KeyError:
        raise RuntimeError(
            f"blob {digest.hex()[:12]} was not sent to this slot (the blob caches are out of "
            "step: a bug in parallelize)"
        ) from None
    if isinstance(value, _BlobFailure):
        raise RuntimeError(
            f"a large argument (blob {digest.hex()[:12]}) could not be unpickled on this host: "
            f"{type(value.error).__name__}: {value.error}"
        ) from value.error
    return value


def _run(
    attempt_id: int,
    fn_id: int,
    args_payload: bytes,
    fns: dict[int, Any],
    fn_bytes: dict[int, bytes],
    compress: bool = False,
) -> bytes:
    """Run one attempt with the call runner every worker runtime shares
    (``parallelize/_outcome.py``, shipped beside this module) -> its RESULT frame.

    Blob references in the arguments unpickle to the slot's objects (:func:`resolve_blob`)."""
    payload, failure, duration = _outcome.run_call(
        fns, fn_bytes, fn_id, pickle.loads, args_payload, _outcome.dumps_value
    )
    if payload is None:
        return _wire.encode_result(attempt_id, False, failure or b"", duration)
    if compress and len(payload) >= _COMPRESS_MIN:
        packed = _compressed(payload)
        if packed is not None:
            return _wire.encode_result(attempt_id, True, packed, duration, zstd=True)
    return _wire.encode_result(attempt_id, True, payload, duration)


# Results: compressed in the slot (so slots compress in parallel, not the agent's loop), at
# zstd's fastest level, when a sample shows it pays: the point is to beat the link.
_COMPRESS_MIN = 64 << 10  # bytes: below this the link's own framing costs more than it saves
_COMPRESS_SAMPLE = 64 << 10
_COMPRESS_RATIO = 1.3  # as for blobs (remote/_blobs.py): random floats shrink ~1.07x


def _compressed(payload: bytes) -> bytes | None:
    try:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=1)
        middle = max(0, len(payload) // 2 - _COMPRESS_SAMPLE // 2)
        sample = payload[middle : middle + _COMPRESS_SAMPLE]
        if len(sample) < _COMPRESS_RATIO * len(compressor.compress(sample)):
            return None
        packed: bytes = compressor.compress(payload)
    except Exception:  # no zstandard after all, out of memory: send it as it is
        return None
    return packed if len(payload) >= _COMPRESS_RATIO * len(packed) else None


def main(argv: list[str] | None = None) -> None:
    """Run the agent: ``argv = [display_name, slots, silence_limit, max_tasks, max_memory,
    compress_results]`` (the limit in seconds, attempts per slot process, resident bytes per
    slot process; 0 or absent: none; ``1``: the controller reads RESULT_ZSTD frames)."""
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else socket.gethostname()
    slots = int(args[1]) if len(args) > 1 else (os.cpu_count() or 1)
    silence_limit = float(args[2]) if len(args) > 2 else 0.0
    max_tasks = int(args[3]) if len(args) > 3 else 0
    max_memory = int(args[4]) if len(args) > 4 else 0
    compress_results = len(args) > 5 and args[5] == "1"
    agent = Agent(name, slots, silence_limit, max_tasks, max_memory, compress_results)
    agent.start()
    try:
        agent.run()
    finally:
        agent.shutdown()


if __name__ == "__main__":
    main()
