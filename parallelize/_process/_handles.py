"""Tasks, worker handles and starting a worker process (no pool state, no lock).

``start_worker`` creates the pipes, the descriptor socket and the process; it
is called with *no* lock held (``fork``/``exec`` takes milliseconds) and
returns a ``_Worker`` that the pool then adds to its state under its lock.
"""

from __future__ import annotations

import contextlib
import enum
import mmap
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from . import _shm
from ._future import ProcessFuture
from ._protocol import CANCEL_POSITIONS, FRAME_HEAD
from ._run_handle import RunHandle, TaskFuture

__all__ = ["State", "Task", "Worker", "complete_future", "death_message", "start_worker"]

WORKER_MODULE = "parallelize._process._worker"
# Start the worker without running parallelize/__init__.py (wrapt, smart_future,
# asyncio: most of a worker's start-up time): placeholder parent packages let the
# worker module import, then they are dropped so that user code importing
# parallelize in the worker gets the real package.
# argv: ROOT TASK_FD RESULT_FD FD_SOCKET CANCEL_FD.
BOOTSTRAP = (
    "import sys, types\n"
    "root = sys.argv[1]\n"
    "for name in ('parallelize', 'parallelize._process'):\n"
    "    stub = types.ModuleType(name)\n"
    "    stub.__path__ = [root + '/' + name.replace('.', '/')]\n"
    "    sys.modules[name] = stub\n"
    f"import {WORKER_MODULE} as worker\n"
    "for name in [n for n in sys.modules if n.partition('.')[0] == 'parallelize']:\n"
    "    del sys.modules[name]\n"
    "worker.main(sys.argv[1:])\n"
)
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_FD_SOCKET_BUFFER = 1 << 20  # bytes; far more than a worker's in-flight descriptor messages
_SMALL_FRAME = 1 << 16


class State(enum.Enum):
    """A worker's state; transitions under the pool lock (see ``_dispatch``)."""

    # Members are singletons compared by identity: hash them as such (Enum hashes the
    # name in Python code; these are dict keys on the hot paths of every call).
    __hash__ = object.__hash__

    STARTING = "starting"  # started, READY frame not yet read: may be sent tasks
    READY = "ready"  # serving
    RETIRING = "retiring"  # sent its max tasks: runs what it has, then exits; gets nothing new
    RETIRED = "retired"  # over its memory limit: exits after its last result, runs nothing more
    EXITING = "exiting"  # the pool is closing: its task pipe is (being) closed
    KILLED = "killed"  # SIGKILL sent (timeout, stopped call, terminate)
    DEAD = "dead"  # reaped


SERVING = (State.STARTING, State.READY)


class Task:
    __slots__ = (
        "args_bytes",
        "discard",
        "fid",
        "fn",
        "fn_bytes",
        "future",
        "segment",
        "task_id",
        "timeout",
        "worker",
    )

    def __init__(
        self,
        task_id: int,
        future: TaskFuture,
        fn: Callable[..., Any],
        fid: int,
        fn_bytes: bytes,
        args_bytes: bytes,
        segment: _shm.Segment | None,
        timeout: float | None,
    ) -> None:
        self.task_id = task_id
        self.future = future
        self.fn = fn
        self.fid = fid
        self.fn_bytes = fn_bytes
        self.args_bytes = args_bytes
        self.segment = segment  # large argument buffers, freed when the task is over
        self.timeout = timeout
        self.worker: Worker | None = None  # the worker it was sent to (None while queued)
        # Its future is finished already (cancelled, timed out): a result is dropped.
        self.discard = False

    def release(self) -> None:
        segment, self.segment = self.segment, None
        if segment is not None:
            segment.close()


class Worker:
    __slots__ = (
        "cancels",
        "channel",
        "deadline",
        "eof",
        "head_started",
        "in_flight",
        "known",
        "outq",
        "path_version",
        "pid",
        "pidfd",
        "proc",
        "rbuf",
        "result_fd",
        "sent",
        "state",
        "task_fd",
    )

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        task_fd: int,
        result_fd: int,
        channel: _shm.FdChannel | None,
        cancels: mmap.mmap | None = None,
    ) -> None:
        self.proc = proc
        # Shared with the worker: a byte per position (the task's number in this worker's
        # stream, modulo CANCEL_POSITIONS) set when a call sent ahead is cancelled, so that
        # the worker skips it instead of running it. None: not available (not Linux).
        self.cancels = cancels
        self.pid = proc.pid
        self.task_fd = task_fd
        self.result_fd = result_fd
        self.channel = channel  # segment descriptors; None when shared memory is off
        try:  # readable once the process has exited: how the result thread reaps it
            self.pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # pragma: no cover - not Linux >= 5.3
            self.pidfd = -1
        self.state = State.STARTING
        self.in_flight: deque[Task] = deque()  # sent, unanswered, in the order it runs them
        self.known: OrderedDict[int, None] = OrderedDict()  # function ids the worker holds
        self.outq: deque[bytes | memoryview] = deque()  # unsent bytes of the task pipe
        self.path_version = -1
        self.sent = 0  # tasks sent over its life (max_tasks_per_worker)
        # Whether the head of in_flight is running, and its deadline (inf: none).
        self.head_started = False
        self.deadline = float("inf")
        self.eof = False  # its result pipe reached EOF (result thread only)
        self.rbuf = bytearray()  # result thread only

    def write(self, payload: bytes) -> None:
        """Queue one frame (the caller flushes; lock held)."""
        head = FRAME_HEAD.pack(len(payload))
        if len(payload) <= _SMALL_FRAME:
            self.outq.append(head + payload)
        else:
            self.outq.append(head)
            self.outq.append(memoryview(payload))

    def flush(self) -> bool:
        """Write what the pipe takes now; True when nothing is left (lock held)."""
        outq = self.outq
        while outq:
            data = outq[0]
            try:
                written = os.write(self.task_fd, data)
            except BlockingIOError:
                return False
            except OSError:
                outq.clear()  # the worker is gone; the result thread reaps it
                return True
            if written < len(data):
                outq[0] = memoryview(data)[written:]
                return False
            outq.popleft()
        return True

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()

    def skip_if_cancelled(self, task: Task, number: int) -> None:
        """*task*, the worker's task *number* (from 0), waits behind another: if its future
        is cancelled before the worker starts it, the worker skips it (lock held; the flag
        is written by whichever thread cancels, a single byte: no lock needed)."""
        cancels = self.cancels
        if cancels is None:
            return
        position = number % CANCEL_POSITIONS
        cancels[position] = 0  # a task CANCEL_POSITIONS back held it: long finished
        future = task.future
        if isinstance(future, (RunHandle, ProcessFuture)):  # (REMOTE's: no closure per call)
            future.set_skip_flag(cancels, position)
            return

        def flag(future: TaskFuture) -> None:
            if future.cancelled():
                cancels[position] = 1

        task.future.add_done_callback(flag)


def start_worker(
    env: dict[str, str],
    startup: bytes,
    shm: bool,
    bootstrap: str,
    stdio: Callable[[], tuple[int, int]] | None = None,
) -> Worker:
    """Start one worker process and queue its startup frame (no lock held: blocks briefly).
    *stdio*: makes the write ends of its own stdout and stderr pipes, closed here once
    the worker has them (default: the worker writes to this process's stdout, stderr)."""
    out_fd, err_fd = stdio() if stdio is not None else (-1, -1)
    task_r, task_w = os.pipe()
    try:
        result_r, result_w = os.pipe()
    except OSError:
        os.close(task_r)
        os.close(task_w)
        raise
    channel: _shm.FdChannel | None = None
    child_socket = -1
    try:
        if shm:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _FD_SOCKET_BUFFER)
            channel = _shm.FdChannel(ours.detach())
            child_socket = theirs.detach()
    except BaseException:
        for fd in (task_r, task_w, result_r, result_w):
            os.close(fd)
        raise
    cancel_fd, cancels = _cancel_map()
    pass_fds = tuple(fd for fd in (task_r, result_w, child_socket, cancel_fd) if fd >= 0)
    try:
        flags: list[str] = getattr(subprocess, "_args_from_interpreter_flags", list)()
        proc = subprocess.Popen(
            [
                sys.executable,
                *flags,
                "-c",
                bootstrap,
                PACKAGE_ROOT,
                str(task_r),
                str(result_w),
                str(child_socket),
                str(cancel_fd),
            ],
            pass_fds=pass_fds,
            stdin=subprocess.DEVNULL,
            stdout=None if out_fd < 0 else out_fd,
            stderr=None if err_fd < 0 else err_fd,
            env=env,
        )
    except BaseException:
        os.close(task_w)
        os.close(result_r)
        if channel is not None:
            channel.close()
        if cancels is not None:
            cancels.close()
        raise
    finally:
        os.close(task_r)
        os.close(result_w)
        for fd in (out_fd, err_fd):  # the worker's copies are enough: EOF when it ends
            if fd >= 0:
                os.close(fd)
        if child_socket >= 0:
            os.close(child_socket)
        if cancel_fd >= 0:
            os.close(cancel_fd)  # the mapping keeps the memory
    os.set_blocking(task_w, False)
    os.set_blocking(result_r, False)
    worker = Worker(proc, task_w, result_r, channel, cancels)
    worker.write(startup)
    return worker


def _cancel_map() -> tuple[int, mmap.mmap | None]:
    """A shared page of cancel flags for a new worker: (descriptor for the child, mapping)."""
    try:
        fd = os.memfd_create("parallelize-cancels", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, or no descriptor left: no skipping
        return -1, None
    try:
        os.ftruncate(fd, CANCEL_POSITIONS)
        return fd, mmap.mmap(fd, CANCEL_POSITIONS)
    except OSError:
        os.close(fd)
        return -1, None


def startup_message(
    sys_path: list[str],
    pythonpath: str | None,
    shm_threshold: int | None,
    title: str,
    max_memory: int | None,
) -> bytes:
    return pickle.dumps((sys_path, pythonpath, shm_threshold, title, max_memory), protocol=5)


def death_message(pid: int, returncode: int, name: str, starting: bool) -> str:
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = "signal"
        how = f"was killed by signal {signame} ({-returncode})"
    else:
        how = f"died with exit code {returncode}"
    when = "while starting (see its stderr)" if starting else f"while running {name}"
    return f"worker process {pid} {how} {when}"


def complete_future(future: TaskFuture, value: Any, error: BaseException | None) -> None:
    try:
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
    except Exception:  # completed by someone else (cancelled, stopped: InvalidStateError)
        pass
