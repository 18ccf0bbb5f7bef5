"""The worker process of :class:`ProcessExecutor`: ``python -m parallelize._process._worker``.

Usage: ``python -m parallelize._process._worker TASK_FD RESULT_FD FD_SOCKET CANCEL_FD``. See
``_protocol`` for the messages, ``_shm`` for large buffers in shared memory. Kept
small and light to import (``cloudpickle`` and ``traceback`` are imported only
when needed) so that a worker starts fast.

Two threads:

* the *main* thread reads task frames from the task pipe, runs the tasks one
  by one in arrival order and writes one result frame per task to the result
  pipe.
* a *watchdog* thread waits (``poll``) for the task pipe to lose its writer --
  the parent shut the pool down, or died, even by SIGKILL -- and then calls
  ``os._exit`` at once, even if a task is still running: a worker never
  outlives its parent. (It watches the pipe rather than reading it, so that
  the main thread reads tasks without a thread hop.)

SIGINT is ignored: a Ctrl-C in the terminal reaches the whole process group,
and the parent decides what to cancel.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)

import importlib  # noqa: E402
import io  # noqa: E402
import mmap  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import select  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

from .._outcome import cloudpickle_dumps, dumps_value, run_call  # noqa: E402
from . import _memory, _shm  # noqa: E402
from ._protocol import (  # noqa: E402
    CANCEL_POSITIONS,
    FLAG_RETIRING,
    FRAME_HEAD,
    KIND_ERROR,
    KIND_OK,
    KIND_OK_SHM,
    KIND_READY,
    KIND_SKIPPED,
    RESULT_HEAD,
    WORKER_EXIT_ON_EOF,
)

TYPE_CHECKING = False  # not imported from typing: the worker does not need typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO

_FRAME_HEAD_SIZE = FRAME_HEAD.size

_HEAVY_FRAME = 1 << 16  # bytes
_HEAVY_SECONDS = 0.001

# Shared memory for large buffers (see _shm): the descriptor socket and the size
# threshold, set by main; None when the parent turned it off.
_large: tuple[_shm.FdChannel, int] | None = None
# The resident size over which the worker retires after a call (max_worker_memory).
_max_memory: int | None = None
# A call since the last release was large: release memory when next idle.
_grown = False


def _read_frame(stream: BinaryIO) -> bytes | None:
    """One frame's payload, or None at EOF (or on a read error)."""
    try:
        head = stream.read(_FRAME_HEAD_SIZE)
        if len(head) < _FRAME_HEAD_SIZE:
            return None
        (size,) = FRAME_HEAD.unpack(head)
        payload = stream.read(size)
    except (OSError, ValueError):
        return None
    if len(payload) < size:
        return None
    return payload


def _send(fd: int, body: bytes) -> None:
    """Write one frame; if the parent is gone, exit."""
    view = memoryview(FRAME_HEAD.pack(len(body)) + body)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        os._exit(WORKER_EXIT_ON_EOF)


def _watchdog(task_fd: int) -> None:
    """Exit the moment the task pipe has no writer left, even while a task runs.

    ``poll`` with no requested events still reports POLLHUP (no writer left)
    and does not consume data, so the main thread can keep reading the same
    pipe directly (no thread hop per message).
    """
    poller = select.poll()
    poller.register(task_fd, 0)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:  # pragma: no cover - retried by Python since 3.5
            continue
        if any(mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, mask in events):
            # The parent closed the pipe or died: leave now, running task or not.
            os._exit(WORKER_EXIT_ON_EOF)


def _dump_result(result: Any) -> tuple[bytes, _shm.Segment | None]:
    """The result's pickle, its large buffers in a shared-memory segment when there are any
    (``run_call``'s *dump*: what it raises makes the result unpicklable)."""
    if _large is not None:
        try:
            return _shm.dumps_with_buffers(
                (pickle.dumps, cloudpickle_dumps),
                _shm.wrap_top_level(result, _large[1]),
                _large[1],
                f"parallelize:{os.getppid()}:result",
            )
        except OSError:  # no descriptor or memory left for a segment: use the pipe
            pass
    return dumps_value(result), None


def _result_body(
    task_id: int, duration: float, payload: bytes, segment: _shm.Segment | None
) -> bytes:
    if segment is None:
        return RESULT_HEAD.pack(KIND_OK, task_id, duration) + payload
    if _large is not None:
        try:
            _large[0].send([segment.fd])  # before the frame that refers to it
        except OSError:
            os._exit(WORKER_EXIT_ON_EOF)  # the parent is gone
        finally:
            segment.close()  # the message in flight holds the segment now
    head = RESULT_HEAD.pack(KIND_OK_SHM, task_id, duration)
    return head + _shm.encode_layout(segment.layout) + payload


def _load_shared_args(
    data: tuple[bytes, int, tuple[tuple[int, int], ...]],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``run_call``'s *load_args* for arguments with buffers in a shared-memory segment."""
    args_bytes, segment, layout = data
    loaded: tuple[tuple[Any, ...], dict[str, Any]]
    loaded = _shm.loads_with_segment(args_bytes, segment, layout, writable=False)
    return loaded


def _receive_segments(tasks: list[tuple[Any, ...]]) -> list[int]:
    """The segment descriptors of a frame's tasks (those with a layout), in task order."""
    count = sum(1 for task in tasks if task[4] is not None)
    if not count:
        return []
    if _large is None:  # pragma: no cover - protocol bug
        raise RuntimeError("the parent sent shared memory to a worker without a socket")
    return _large[0].receive(count)


def _release_memory_if_idle(stream: BinaryIO) -> None:
    """After a frame's tasks: if no other frame is waiting, give freed memory back.

    A large call stays owed a release (``_grown``) until the worker is idle, even if
    smaller frames run in between."""
    global _grown
    if not select.select([stream], [], [], 0)[0]:
        _grown = False
        _memory.release_if_grown()


def _over_memory_limit(limit: int) -> bool:
    """After a call: is the worker over *limit* even once garbage and free heap are released?"""
    rss = _memory.resident_bytes()
    if rss is None or rss <= limit:
        return False
    _memory.release_if_grown(force=True)
    rss = _memory.resident_bytes()
    return rss is not None and rss > limit


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _serve(stream: BinaryIO, result_fd: int, cancels: mmap.mmap | None) -> None:
    global _grown
    functions: dict[int, Callable[..., Any]] = {}
    function_bytes: dict[int, bytes] = {}
    loads = pickle.loads
    number = -1  # of the task in this worker's stream, as the parent numbers them
    while True:
        message = _read_frame(stream)
        if message is None:
            os._exit(WORKER_EXIT_ON_EOF)
        evict, tasks, new_path = loads(message)
        if new_path is not None:
            sys.path[:] = new_path
            importlib.invalidate_caches()
        for fid in evict:
            functions.pop(fid, None)
            function_bytes.pop(fid, None)
        segments = iter(_receive_segments(tasks))
        # Worth checking the memory afterwards (the check costs ~10 us: not after tiny calls).
        heavy = _grown or len(message) >= _HEAVY_FRAME
        limit = _max_memory
        for task_id, fid, fn_bytes, args_bytes, layout in tasks:
            if fn_bytes is not None:
                function_bytes[fid] = fn_bytes  # (later tasks may need it: kept even if skipped)
            segment = -1 if layout is None else next(segments)
            number += 1
            if cancels is not None and cancels[number % CANCEL_POSITIONS]:
                # Cancelled while it waited here: not run. The parent counts on one answer
                # per task, in order.
                if segment >= 0:
                    os.close(segment)
                _send(result_fd, RESULT_HEAD.pack(KIND_SKIPPED, task_id, 0.0))
                continue
            # The call runner every worker runtime shares (parallelize/_outcome.py).
            try:
                if layout is None:  # (segment < 0)
                    outcome, failure, duration = run_call(
                        functions, function_bytes, fid, loads, args_bytes, _dump_result
                    )
                else:
                    outcome, failure, duration = run_call(
                        functions,
                        function_bytes,
                        fid,
                        _load_shared_args,
                        (args_bytes, segment, layout),
                        _dump_result,
                    )
            finally:
                if segment >= 0:
                    os.close(segment)  # a mapping holds its own reference
            if outcome is not None:
                body = _result_body(task_id, duration, *outcome)
                outcome = None  # the result's pickle is in the body now
            else:
                body = RESULT_HEAD.pack(KIND_ERROR, task_id, duration) + (failure or b"")
            heavy = heavy or layout is not None or duration >= _HEAVY_SECONDS
            _flush_stdio()
            if limit is not None and _over_memory_limit(limit):
                # Retire: this result tells the parent, which re-queues what else it sent.
                kind = body[0] | FLAG_RETIRING
                _send(result_fd, bytes((kind,)) + body[1:])
                os._exit(0)
            _send(result_fd, body)
        # Keep no large frame, argument pickle or result pickle while waiting.
        message = tasks = args_bytes = None
        body = b""
        if heavy:
            _grown = True
            _release_memory_if_idle(stream)


def _set_title(title: str) -> None:
    """Show *title* in ``ps``/``top`` instead of ``python -c <bootstrap code>``."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a dependency; ps just shows the command line
        return
    setproctitle.setproctitle(title)


def main(argv: list[str]) -> None:
    global _large, _max_memory
    task_fd, result_fd, fd_socket = int(argv[1]), int(argv[2]), int(argv[3])
    cancel_fd = int(argv[4]) if len(argv) > 4 else -1
    cancels = None
    if cancel_fd >= 0:
        cancels = mmap.mmap(cancel_fd, CANCEL_POSITIONS, access=mmap.ACCESS_READ)
        os.close(cancel_fd)
    os.set_inheritable(task_fd, False)
    os.set_inheritable(result_fd, False)
    stream = io.BufferedReader(io.FileIO(task_fd, "r"), buffer_size=1 << 16)
    startup = _read_frame(stream)
    if startup is None:
        os._exit(WORKER_EXIT_ON_EOF)
    sys_path, pythonpath, shm_threshold, *rest = pickle.loads(startup)
    if rest:
        _set_title(rest[0])
    if len(rest) > 1:
        _max_memory = rest[1]
    if fd_socket >= 0:
        os.set_inheritable(fd_socket, False)
        if shm_threshold is not None:
            _large = (_shm.FdChannel(fd_socket), shm_threshold)
        else:
            os.close(fd_socket)
    _memory.release_if_grown()  # records the fresh worker's size
    sys.path[:] = sys_path
    if pythonpath is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = pythonpath
    threading.Thread(
        target=_watchdog, args=(task_fd,), name="parallelize-worker-watchdog", daemon=True
    ).start()
    _send(result_fd, RESULT_HEAD.pack(KIND_READY, 0, 0.0))
    _serve(stream, result_fd, cancels)


if __name__ == "__main__":
    main(sys.argv)
