"""``ProcessExecutor``: a process pool that survives worker deaths and batches tiny tasks.

Design
======

Workers are ``python -m parallelize._process._worker`` processes started with
``subprocess.Popen`` (no fork of the parent, no re-import of its ``__main__``).
Each worker is connected by two pipes (see ``_protocol``): a *task pipe*
(parent writes) and a *result pipe* (worker writes). The worker runs tasks one
at a time in arrival order and answers each with one frame, so the first
unanswered task of a dead worker is the one that was running.

Threads, lock and ownership
---------------------------
* **Caller threads** (``submit``, ``shutdown``, ``cancel_queued``) pickle the
  call *outside* any lock (so an unpicklable call raises ``PicklingError`` in
  the caller), then take ``_Pool.lock`` to queue the task or, when a worker is
  idle and nothing is queued, to send it directly (no thread hop).
* **The result thread** (one per pool, started with the first worker) is the
  only reader of the result pipes and of the wake pipe, owns the selector and
  every ``_Worker.rbuf``, reaps dead workers and completes the futures of
  dispatched tasks. After each round of results it refills the workers from
  the queue.

``_Pool.lock`` guards everything else: ``pending``, ``workers``, each worker's
``state``/``in_flight``/``known``/``outq``, the function-id table, the
duration estimate and the closing flag. Writes to task pipes happen under the
lock but never block: the fds are non-blocking and what does not fit stays in
``_Worker.outq`` (in order) until the result thread sees the pipe writable.
Futures are completed and user callbacks run *outside* the lock. Lock order:
``_Pool.lock`` -> ``TaskStats`` lock (a leaf) -> a Future's own condition.

Worker state machine (``_State``), transitions under the lock:
``STARTING`` -(READY frame)-> ``READY`` -(pool closing and idle)-> ``EXITING``;
any state -(EOF on its result pipe)-> ``DEAD``. Tasks may be sent to
``STARTING`` and ``READY`` workers (the pipe buffers them while it starts).

Task life: caller -> ``pending`` (a deque) -> a worker's ``in_flight`` (its
future is marked running when dispatched, so ``Future.cancel`` works only
while queued) -> completed by the result thread. When a worker dies, its first
in-flight task fails with ``WorkerDiedError`` and the rest go back to the front
of ``pending``; a replacement worker is started on demand.

Large buffers (numpy arrays and other protocol-5 buffers, big ``bytes``) of at
least ``shm_threshold`` bytes travel in shared-memory segments whose
descriptors go over a third channel per worker, a Unix socket (see ``_shm``).
A task owns its argument segment until it completes (it is re-sent if the
task is re-queued); callers create segments in ``submit``, outside the lock.
The descriptor socket is written under the lock (like the task pipe; one
small message per batch, never more than a worker's in-flight batches, so
it does not fill) and read by the result thread only.

Batching: each worker gets up to ``depth`` tasks in one message and is
refilled when at most ``depth // 2`` remain. ``depth`` adapts to an average of
the task durations measured in the workers, so that a worker holds about
``_PREFETCH_WINDOW`` seconds of work (1 while nothing has been measured, at
most ``_MAX_DEPTH``): tiny tasks are batched, long tasks are spread evenly.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

from .._errors import PicklingError, WorkerDiedError, attach_remote_traceback
from .._executor_base import BaseExecutor, waits_at_exit
from .._pickling import (
    callable_name,
    dumps_args,
    dumps_function,
    dumps_with_buffer_callback,
    split_bound_method,
)
from .._stats import Outcome, TaskStats
from . import _shm
from ._protocol import (
    FRAME_HEAD,
    KIND_ERROR,
    KIND_OK,
    KIND_OK_SHM,
    KIND_READY,
    KIND_UNPICKLABLE_RESULT,
    RESULT_HEAD,
)

__all__ = ["ProcessExecutor"]

P = ParamSpec("P")
T = TypeVar("T")

_WORKER_MODULE = "parallelize._process._worker"
# Start the worker without running parallelize/__init__.py (wrapt, smart_future,
# asyncio: most of a worker's start-up time): placeholder parent packages let the
# worker module import, then they are dropped so that user code importing
# parallelize in the worker gets the real package. argv: ROOT TASK_FD RESULT_FD FD_SOCKET.
_BOOTSTRAP = (
    "import sys, types\n"
    "root = sys.argv[1]\n"
    "for name in ('parallelize', 'parallelize._process'):\n"
    "    stub = types.ModuleType(name)\n"
    "    stub.__path__ = [root + '/' + name.replace('.', '/')]\n"
    "    sys.modules[name] = stub\n"
    f"import {_WORKER_MODULE} as worker\n"
    "for name in [n for n in sys.modules if n.partition('.')[0] == 'parallelize']:\n"
    "    del sys.modules[name]\n"
    "worker.main(sys.argv[1:])\n"
)
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PREFETCH_WINDOW = 0.002  # seconds of work a worker should hold
_PER_TASK_OVERHEAD = 15e-6  # unmeasured per-task cost in the worker (unpickle, pickle, write)
_MAX_DEPTH = 64
_EWMA_WEIGHT = 0.2
_FUNCTION_CACHE_SIZE = 1024  # functions a worker keeps unpickled (mirrored by the parent)
_FUNCTION_IDS_SIZE = 4096  # distinct function pickles the parent keeps ids for
_READ_SIZE = 1 << 18
_SMALL_FRAME = 1 << 16
_STARTUP_FAILURE_LIMIT = 3
_REAP_TIMEOUT = 10.0

_FRAME_HEAD_SIZE = FRAME_HEAD.size
_RESULT_HEAD_SIZE = RESULT_HEAD.size

# Arguments of these exact types pickle identically with plain pickle, which
# is several times faster than cloudpickle for a small call.
_SIMPLE_TYPES = frozenset({int, float, str, bytes, bool, type(None)})
_EMPTY_CALL = pickle.dumps(((), {}), protocol=5)
_NEVER = 1 << 62  # a size no buffer has: the threshold when shared memory is off
_FD_SOCKET_BUFFER = 1 << 20  # bytes; far more than a worker's in-flight descriptor messages


class _State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    EXITING = "exiting"
    DEAD = "dead"


class _Task:
    __slots__ = ("args_bytes", "fid", "fn", "fn_bytes", "future", "segment", "started", "task_id")

    def __init__(
        self,
        task_id: int,
        future: Future[Any],
        fn: Callable[..., Any],
        fid: int,
        fn_bytes: bytes,
        args_bytes: bytes,
        segment: _shm.Segment | None,
    ) -> None:
        self.task_id = task_id
        self.future = future
        self.fn = fn
        self.fid = fid
        self.fn_bytes = fn_bytes
        self.args_bytes = args_bytes
        self.segment = segment  # large argument buffers, freed when the task is over
        self.started = False  # future marked running (it stays so if re-queued)

    def release(self) -> None:
        segment, self.segment = self.segment, None
        if segment is not None:
            segment.close()


class _Worker:
    __slots__ = (
        "channel",
        "in_flight",
        "known",
        "outq",
        "path_version",
        "pid",
        "proc",
        "rbuf",
        "result_fd",
        "state",
        "task_fd",
    )

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        task_fd: int,
        result_fd: int,
        channel: _shm.FdChannel | None,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.task_fd = task_fd
        self.result_fd = result_fd
        self.channel = channel  # segment descriptors; None when shared memory is off
        self.state = _State.STARTING
        self.in_flight: deque[_Task] = deque()
        self.known: OrderedDict[int, None] = OrderedDict()  # function ids the worker holds
        self.outq: deque[bytes | memoryview] = deque()  # unsent bytes of the task pipe
        self.path_version = -1
        self.rbuf = bytearray()  # result thread only


def _dumps_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    shm_threshold: int | None,
) -> tuple[bytes, _shm.Segment | None]:
    if not args and not kwargs:
        return _EMPTY_CALL, None
    simple = _SIMPLE_TYPES
    big = _NEVER if shm_threshold is None else shm_threshold
    for value in args:
        tp = type(value)
        if tp not in simple or (tp is bytes and len(value) >= big):
            break
    else:
        for value in kwargs.values():
            tp = type(value)
            if tp not in simple or (tp is bytes and len(value) >= big):
                break
        else:
            return pickle.dumps((args, kwargs), protocol=5), None
    if shm_threshold is None:
        return dumps_args(fn, args, kwargs), None
    call: Any = (args, kwargs)
    if _has_big_bytes(args, big) or _has_big_bytes(kwargs.values(), big):
        wrap = _shm.wrap_top_level
        call = (
            tuple(wrap(value, big) for value in args),
            {key: wrap(value, big) for key, value in kwargs.items()},
        )
    try:
        return _shm.dumps_with_buffers(
            (dumps_with_buffer_callback,), call, big, f"parallelize:{os.getpid()}:args"
        )
    except OSError:
        # No descriptor (many queued calls: one segment each) or memory left for a
        # segment: this call goes through the pipe. (A pickling error raises below.)
        return dumps_args(fn, args, kwargs), None
    except Exception:
        dumps_args(fn, args, kwargs)  # raises a PicklingError that names the argument
        raise


def _has_big_bytes(values: Iterable[Any], threshold: int) -> bool:
    for value in values:
        tp = type(value)
        if (tp is bytes or tp is bytearray) and len(value) >= threshold:
            return True
    return False


def _death_message(pid: int, returncode: int, name: str, starting: bool) -> str:
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


def _complete_future(future: Future[Any], value: Any, error: BaseException | None) -> None:
    try:
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
    except Exception:  # pragma: no cover - completed by someone else (InvalidStateError)
        pass


class _Pool:
    """The state shared by caller threads and the result thread (see the module docstring)."""

    def __init__(
        self, max_workers: int, name: str, stats: TaskStats, shm_threshold: int | None
    ) -> None:
        self.max_workers = max_workers
        self.shm_threshold = shm_threshold
        self.name = name
        self.stats = stats
        self.lock = threading.Lock()
        self.pending: deque[_Task] = deque()
        self.workers: list[_Worker] = []
        self.function_ids: dict[bytes, int] = {}
        self.next_fid = 0
        self.next_task_id = 0
        self.avg_duration: float | None = None
        self.closing = False
        self.startup_failures = 0
        self.requeued = 0  # tasks sent to a worker that died before starting them
        self.sent_path: list[str] = []
        self.path_version = 0
        self.thread: threading.Thread | None = None
        self.wake_r = -1
        self.wake_w = -1
        self.wake_pending = False
        self.env: dict[str, str] | None = None

    # -- caller side --------------------------------------------------------

    def submit(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        fn_bytes: bytes,
        args_bytes: bytes,
        segment: _shm.Segment | None,
    ) -> None:
        with self.lock:
            if self.closing:
                if segment is not None:
                    segment.close()
                raise RuntimeError(
                    f"cannot submit to ProcessExecutor {self.name!r}: it has been shut down"
                )
            if sys.path != self.sent_path:
                self.sent_path = list(sys.path)
                self.path_version += 1
            fid = self.function_ids.get(fn_bytes)
            if fid is None:
                fid = self._new_function_id(fn_bytes)
            task = _Task(self.next_task_id, future, fn, fid, fn_bytes, args_bytes, segment)
            if not self.pending:
                for worker in self.workers:
                    if not worker.in_flight and (
                        worker.state is _State.READY or worker.state is _State.STARTING
                    ):
                        self.next_task_id += 1
                        self.stats.task_submitted()
                        self.pending.append(task)
                        self._send_batch(worker, 1)
                        return
            if len(self.workers) < self.max_workers:
                worker = self._spawn()  # may raise: then nothing was queued
                self.next_task_id += 1
                self.stats.task_submitted()
                self.pending.append(task)
                self._send_batch(worker, self._depth())
                return
            self.next_task_id += 1
            self.stats.task_submitted()
            self.pending.append(task)

    def cancel_queued(self) -> int:
        with self.lock:
            queued = [task for task in self.pending if not task.started]
            self.pending = deque(task for task in self.pending if task.started)
        cancelled = 0
        for task in queued:  # outside the lock: cancel() runs the futures' callbacks
            task.release()
            self.stats.task_finished(Outcome.CANCELLED)
            if not task.future.cancelled() and task.future.cancel():
                cancelled += 1
        return cancelled

    def close(self) -> None:
        """Stop accepting tasks; workers exit once the queued and running tasks are done."""
        with self.lock:
            if self.closing:
                return
            self.closing = True
            self._wake()

    def terminate(self) -> None:
        """Stop now: cancel queued tasks and kill the workers, even mid-task."""
        self.cancel_queued()
        with self.lock:
            self.closing = True
            workers = list(self.workers)
            self._wake()
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.proc.kill()

    def join(self) -> None:
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def after_fork_in_child(self) -> None:
        """Make this pool inert in a forked child without touching the parent's workers."""
        self.lock = threading.Lock()  # the parent's may have been held by another thread
        self.closing = True
        self.thread = None
        for worker in self.workers:
            for fd in (worker.task_fd, worker.result_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if worker.channel is not None:
                with contextlib.suppress(OSError):
                    worker.channel.close()
            worker.state = _State.DEAD
            worker.proc.returncode = 0  # not our child: never wait for it
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.wake_r = self.wake_w = -1
        self.workers = []
        self.pending = deque()

    # -- helpers, called with the lock held ---------------------------------

    def _new_function_id(self, fn_bytes: bytes) -> int:
        if len(self.function_ids) >= _FUNCTION_IDS_SIZE:
            # Forget the oldest; if it is used again it just gets a new id.
            del self.function_ids[next(iter(self.function_ids))]
        fid = self.next_fid
        self.next_fid += 1
        self.function_ids[fn_bytes] = fid
        return fid

    def _depth(self) -> int:
        avg = self.avg_duration
        if avg is None:
            return 1
        return max(1, min(_MAX_DEPTH, int(_PREFETCH_WINDOW / (avg + _PER_TASK_OVERHEAD))))

    def _wake(self) -> None:
        if self.wake_w >= 0 and not self.wake_pending:
            self.wake_pending = True
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"x")

    def _spawn(self) -> _Worker:
        if self.env is None:
            env = dict(os.environ)
            old = env.get("PYTHONPATH")
            env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + old if old else "")
            self.env = env
            self._original_pythonpath = old
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
            if self.shm_threshold is not None:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                ours.setblocking(False)
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _FD_SOCKET_BUFFER)
                channel = _shm.FdChannel(ours.detach())
                child_socket = theirs.detach()
        except BaseException:
            for fd in (task_r, task_w, result_r, result_w):
                os.close(fd)
            raise
        pass_fds = (task_r, result_w) if child_socket < 0 else (task_r, result_w, child_socket)
        try:
            flags: list[str] = getattr(subprocess, "_args_from_interpreter_flags", list)()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    *flags,
                    "-c",
                    _BOOTSTRAP,
                    _PACKAGE_ROOT,
                    str(task_r),
                    str(result_w),
                    str(child_socket),
                ],
                pass_fds=pass_fds,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        except BaseException:
            os.close(task_w)
            os.close(result_r)
            if channel is not None:
                channel.close()
            raise
        finally:
            os.close(task_r)
            os.close(result_w)
            if child_socket >= 0:
                os.close(child_socket)
        os.set_blocking(task_w, False)
        os.set_blocking(result_r, False)
        worker = _Worker(proc, task_w, result_r, channel)
        title = f"parallelize worker pool={self.name} parent={os.getpid()}"
        startup = pickle.dumps(
            (self.sent_path, self._original_pythonpath, self.shm_threshold, title), protocol=5
        )
        worker.path_version = self.path_version
        self._write(worker, startup)
        self.workers.append(worker)
        if self.thread is None:
            self.wake_r, self.wake_w = os.pipe()
            os.set_blocking(self.wake_r, False)
            os.set_blocking(self.wake_w, False)
            self.thread = threading.Thread(
                target=self._result_loop, name=f"parallelize-{self.name}-results", daemon=True
            )
            self.thread.start()
        else:
            self._wake()  # register the new worker's result pipe
        return worker

    _original_pythonpath: str | None = None

    def _send_batch(self, worker: _Worker, count: int) -> None:
        """Move up to *count* tasks from ``pending`` to *worker* in one message."""
        items: list[tuple[int, int, bytes | None, bytes, tuple[tuple[int, int], ...] | None]] = []
        segments: list[int] = []
        known = worker.known
        in_flight = worker.in_flight
        pending = self.pending
        while pending and len(items) < count:
            task = pending.popleft()
            if not task.started:
                if not task.future.set_running_or_notify_cancel():
                    task.release()
                    self.stats.task_finished(Outcome.CANCELLED)
                    continue
                task.started = True
            fid = task.fid
            fn_bytes: bytes | None = None
            if fid in known:
                known.move_to_end(fid)
            else:
                known[fid] = None
                fn_bytes = task.fn_bytes
            layout = None
            if task.segment is not None:
                layout = task.segment.layout
                segments.append(task.segment.fd)
            items.append((task.task_id, fid, fn_bytes, task.args_bytes, layout))
            in_flight.append(task)
        if not items:
            return
        evict: list[int] = []
        while len(known) > _FUNCTION_CACHE_SIZE:  # never one of this batch: they are newest
            evict.append(known.popitem(last=False)[0])
        new_path = None
        if worker.path_version != self.path_version:
            worker.path_version = self.path_version
            new_path = self.sent_path
        if segments:
            self._send_segments(worker, segments)
        self._write(worker, pickle.dumps((evict, items, new_path), protocol=5))

    def _send_segments(self, worker: _Worker, fds: list[int]) -> None:
        """Send a batch's segment descriptors ahead of its frame (lock held; does not block)."""
        try:
            if worker.channel is None:  # pragma: no cover - segments are made only with a channel
                raise OSError("no descriptor socket")
            worker.channel.send(fds)
        except OSError:
            # The worker is gone (EPIPE), or -- never seen, see _FD_SOCKET_BUFFER -- the socket
            # is full: the worker could not find the descriptors of this frame, so stop it;
            # its EOF fails its running task and re-queues the others.
            with contextlib.suppress(OSError):
                worker.proc.kill()

    def _write(self, worker: _Worker, payload: bytes) -> None:
        head = FRAME_HEAD.pack(len(payload))
        if len(payload) <= _SMALL_FRAME:
            worker.outq.append(head + payload)
        else:
            worker.outq.append(head)
            worker.outq.append(memoryview(payload))
        if not self._flush(worker) and threading.current_thread() is not self.thread:
            self._wake()  # the result thread will wait for the pipe to be writable

    def _flush(self, worker: _Worker) -> bool:
        """Write what the pipe takes now; True when nothing is left."""
        outq = worker.outq
        while outq:
            data = outq[0]
            try:
                written = os.write(worker.task_fd, data)
            except BlockingIOError:
                return False
            except OSError:
                outq.clear()  # the worker is gone; the result thread handles its EOF
                return True
            if written < len(data):
                outq[0] = memoryview(data)[written:]
                return False
            outq.popleft()
        return True

    def _fill(self) -> None:
        """Refill workers that are low on work and start workers if tasks still wait."""
        if not self.pending:
            return
        depth = self._depth()
        low = depth // 2
        for worker in self.workers:
            if not self.pending:
                return
            if worker.state is _State.READY or worker.state is _State.STARTING:
                have = len(worker.in_flight)
                if have <= low:
                    self._send_batch(worker, min(depth - have, self._fair_share(worker)))
        while self.pending and len(self.workers) < self.max_workers:
            worker = self._spawn()
            self._send_batch(worker, min(depth, self._fair_share(worker)))

    def _fair_share(self, worker: _Worker) -> int:
        # The depth comes from the average duration of *all* tasks so far, which
        # a few tiny calls can make misleadingly small; never give a worker more
        # than its share of the outstanding work, so a burst of long tasks is
        # spread evenly over the pool.
        outstanding = len(self.pending) + sum(len(w.in_flight) for w in self.workers)
        share = -(-outstanding // self.max_workers)
        return max(1, share - len(worker.in_flight))

    # -- the result thread --------------------------------------------------

    # Owned by the result thread: the selector, and for each worker it watches
    # whether its task pipe is registered for writability (its result pipe
    # always is, for reading).
    _selector: selectors.BaseSelector
    _watching: dict[_Worker, bool]

    def _result_loop(self) -> None:
        selector = self._selector = selectors.DefaultSelector()
        self._watching = {}
        selector.register(self.wake_r, selectors.EVENT_READ, None)
        try:
            while self._sync():
                for key, _ in selector.select():
                    if key.data is None:
                        self._drain_wake()
                        continue
                    worker, writable = key.data
                    if writable:
                        with self.lock:
                            if worker.state is _State.READY or worker.state is _State.STARTING:
                                self._flush(worker)
                    else:
                        self._read(worker)
        except BaseException as exc:  # pragma: no cover - a bug: do not leave callers hanging
            self._abort(exc)
            raise
        finally:
            selector.close()

    def _abort(self, exc: BaseException) -> None:
        with self.lock:
            self.closing = True
            tasks = list(self.pending)
            self.pending.clear()
            for worker in self.workers:
                tasks.extend(worker.in_flight)
                worker.in_flight.clear()
                worker.proc.kill()
        error = RuntimeError(f"ProcessExecutor {self.name!r} failed internally: {exc!r}")
        for task in tasks:
            if task.started or task.future.set_running_or_notify_cancel():
                _complete_future(task.future, None, error)

    def _drain_wake(self) -> None:
        with self.lock:
            self.wake_pending = False
            try:
                while os.read(self.wake_r, 4096):
                    pass
            except OSError:
                pass

    def _sync(self) -> bool:
        """Update the selector; start exits when closing and idle. False: all done."""
        selector = self._selector
        watching = self._watching
        with self.lock:
            if (
                self.closing
                and not self.pending
                and not any(worker.in_flight for worker in self.workers)
            ):
                for worker in self.workers:
                    if worker.state is _State.READY or worker.state is _State.STARTING:
                        worker.state = _State.EXITING
                        worker.outq.clear()
                        self._close_task_fd(worker)  # EOF: the worker exits at once
                if not self.workers:
                    os.close(self.wake_r)
                    os.close(self.wake_w)
                    self.wake_r = self.wake_w = -1
                    return False
            for worker in self.workers:
                if worker.state is _State.DEAD:
                    continue
                writing = watching.get(worker)
                if writing is None:
                    selector.register(worker.result_fd, selectors.EVENT_READ, (worker, False))
                    writing = watching[worker] = False
                want = bool(worker.outq) and (
                    worker.state is _State.READY or worker.state is _State.STARTING
                )
                if want and not writing:
                    selector.register(worker.task_fd, selectors.EVENT_WRITE, (worker, True))
                    watching[worker] = True
                elif writing and not want:
                    selector.unregister(worker.task_fd)
                    watching[worker] = False
        return True

    def _close_task_fd(self, worker: _Worker) -> None:
        """Close the parent's end of the task pipe, once (lock held, result thread)."""
        if self._watching.get(worker):
            self._selector.unregister(worker.task_fd)
            self._watching[worker] = False
        if worker.task_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(worker.task_fd)
            worker.task_fd = -1

    def _read(self, worker: _Worker) -> None:
        try:
            chunk = os.read(worker.result_fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        frames: list[tuple[int, int, float, bytes, Any]] = []
        if chunk:
            buf = worker.rbuf
            buf += chunk
            size = len(buf)
            pos = 0
            while size - pos >= _FRAME_HEAD_SIZE:
                (length,) = FRAME_HEAD.unpack_from(buf, pos)
                end = pos + _FRAME_HEAD_SIZE + length
                if end > size:
                    break
                kind, task_id, duration = RESULT_HEAD.unpack_from(buf, pos + _FRAME_HEAD_SIZE)
                payload = bytes(buf[pos + _FRAME_HEAD_SIZE + _RESULT_HEAD_SIZE : end])
                segment: Any = None
                if kind == KIND_OK_SHM:
                    segment = self._receive_segment(worker)
                frames.append((kind, task_id, duration, payload, segment))
                pos = end
            if pos:
                del buf[:pos]
        completions: list[tuple[_Task, int, float, bytes, Any]] = []
        failed: list[tuple[_Task, BaseException]] = []
        starting = False
        with self.lock:
            for kind, task_id, duration, payload, segment in frames:
                if kind == KIND_READY:
                    if worker.state is _State.STARTING:
                        worker.state = _State.READY
                    self.startup_failures = 0
                    continue
                task = worker.in_flight.popleft()
                if task.task_id != task_id:  # pragma: no cover - protocol bug
                    raise AssertionError(f"result for task {task_id}, expected {task.task_id}")
                completions.append((task, kind, duration, payload, segment))
                avg = self.avg_duration
                self.avg_duration = (
                    duration if avg is None else avg + _EWMA_WEIGHT * (duration - avg)
                )
            if chunk:
                self._fill_safely(failed)
            else:
                starting = worker.state is _State.STARTING
                if worker.state is not _State.EXITING:
                    worker.state = _State.DEAD  # nobody writes to its pipe any more
                    worker.outq.clear()
                    self._close_task_fd(worker)
        self._complete(worker, completions)
        self._fail(failed)
        if not chunk:
            self._bury(worker, starting)

    @staticmethod
    def _receive_segment(worker: _Worker) -> int | OSError:
        """The descriptor of a result's segment (sent before its frame), or why it is missing."""
        try:
            if worker.channel is None:  # pragma: no cover - protocol bug
                raise OSError("no descriptor socket")
            return worker.channel.receive(1)[0]
        except OSError as exc:
            return exc

    def _fill_safely(self, failed: list[tuple[_Task, BaseException]]) -> None:
        """``_fill``, but if no worker can be started at all, fail the queued tasks."""
        try:
            self._fill()
        except OSError as exc:  # cannot start a worker (out of fds, memory...)
            if self.workers:
                return  # the live workers will take the queue
            error = WorkerDiedError(f"cannot start a worker process: {exc}")
            error.__cause__ = exc
            self._fail_pending(failed, error)

    def _fail_pending(
        self, failed: list[tuple[_Task, BaseException]], error: BaseException
    ) -> None:
        for task in self.pending:
            if task.started or task.future.set_running_or_notify_cancel():
                task.started = True
                failed.append((task, error))
            else:
                self.stats.task_finished(Outcome.CANCELLED)
        self.pending.clear()

    def _fail(self, failed: list[tuple[_Task, BaseException]]) -> None:
        for task, error in failed:
            task.release()
            self.stats.task_finished(Outcome.FAILED)
            _complete_future(task.future, None, error)

    def _bury(self, worker: _Worker, starting: bool) -> None:
        """Reap a worker whose result pipe reached EOF; fail its running task, re-queue the rest."""
        with self.lock:
            self._close_task_fd(worker)
        if self._watching.pop(worker, None) is not None:
            self._selector.unregister(worker.result_fd)
        os.close(worker.result_fd)
        if worker.channel is not None:
            worker.channel.close()  # descriptors still in flight are freed with it
        try:
            returncode = worker.proc.wait(_REAP_TIMEOUT)
        except subprocess.TimeoutExpired:  # closed its pipe but lives on: make sure it is gone
            worker.proc.kill()
            returncode = worker.proc.wait()
        failed: list[tuple[_Task, BaseException]] = []
        with self.lock:
            worker.state = _State.DEAD
            self.workers.remove(worker)
            tasks = list(worker.in_flight)
            worker.in_flight.clear()
            if tasks:
                name = callable_name(tasks[0].fn)
                failed.append(
                    (
                        tasks[0],
                        WorkerDiedError(_death_message(worker.pid, returncode, name, starting)),
                    )
                )
                self.pending.extendleft(reversed(tasks[1:]))
                self.requeued += len(tasks) - 1
            if starting:
                self.startup_failures += 1
                if self.startup_failures >= _STARTUP_FAILURE_LIMIT and self.pending:
                    self._fail_pending(
                        failed,
                        WorkerDiedError(
                            f"{self.startup_failures} worker processes in a row failed to start "
                            f"(last exit code {returncode}); see their stderr"
                        ),
                    )
                    self.startup_failures = 0
            self._fill_safely(failed)
        self._fail(failed)

    def _complete(
        self, worker: _Worker, completions: list[tuple[_Task, int, float, bytes, Any]]
    ) -> None:
        # Stats are recorded before the future completes, so that a caller woken by
        # the result sees them.
        stats = self.stats
        for task, kind, duration, payload, segment in completions:
            task.release()  # the worker is done with the arguments
            value: Any = None
            error: BaseException | None = None
            if kind in (KIND_OK, KIND_OK_SHM):
                try:
                    if kind == KIND_OK:
                        value = pickle.loads(payload)
                    else:
                        value = self._load_shared(payload, segment)
                except BaseException as exc:
                    error = RuntimeError(
                        f"the result of {callable_name(task.fn)} could not be unpickled in "
                        f"the parent process ({type(exc).__name__}: {exc})"
                    )
                    error.__cause__ = exc
            elif kind == KIND_ERROR:
                error = self._remote_exception(task, worker, payload)
            elif kind == KIND_UNPICKLABLE_RESULT:
                type_name, detail = pickle.loads(payload)
                error = PicklingError(
                    f"the result of {callable_name(task.fn)} could not be pickled to send it "
                    f"back from the worker: a {type_name} ({detail}). Return picklable data."
                )
            else:  # pragma: no cover - protocol bug
                error = RuntimeError(f"unknown result kind {kind}")
            stats.task_finished(Outcome.SUCCEEDED if error is None else Outcome.FAILED, duration)
            _complete_future(task.future, value, error)
            del value, error

    @staticmethod
    def _load_shared(payload: bytes, segment: int | OSError) -> Any:
        if isinstance(segment, OSError):
            raise segment
        try:
            layout, start = _shm.decode_layout(payload)
            return _shm.loads_with_segment(
                memoryview(payload)[start:], segment, layout, writable=True
            )
        finally:
            os.close(segment)  # the mapping holds its own reference

    @staticmethod
    def _remote_exception(task: _Task, worker: _Worker, payload: bytes) -> BaseException:
        exc_bytes, type_name, message, tb, _is_base = pickle.loads(payload)
        exc: Any = None
        # Every exception arrives as itself, SystemExit and KeyboardInterrupt too,
        # as with concurrent.futures (and THREAD and REMOTE); the worker survived.
        if exc_bytes is not None:
            try:
                exc = pickle.loads(exc_bytes)
            except Exception:
                exc = None
        if not isinstance(exc, BaseException):
            exc = RuntimeError(
                f"{callable_name(task.fn)} raised {type_name}: {message} (the exception "
                "itself could not be sent back: it is not picklable)"
            )
        return attach_remote_traceback(exc, tb)


_live_pools: weakref.WeakSet[_Pool] = weakref.WeakSet()
_live_executors: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()


class ProcessExecutor(BaseExecutor):
    """Run calls in local worker processes; ``submit`` returns a ``concurrent.futures.Future``.

    Workers are started on demand, up to *max_workers* (default: the number
    of CPUs). Calls are pickled with cloudpickle in ``submit`` (an unpicklable
    function or argument raises :class:`PicklingError` there). A worker that
    dies fails only the task it was running (:class:`WorkerDiedError`) and is
    replaced. Workers exit with the pool, and also as soon as the parent
    process dies.

    Buffers of at least *shm_threshold* bytes (default 1 MiB) -- numpy arrays
    anywhere in the arguments or the result, top-level ``bytes`` -- travel
    through shared memory instead of the pipes: they arrive in the worker as
    read-only views without a copy, and results come back the same way.
    ``shm_threshold=None`` sends everything through the pipes. Shared memory
    needs Linux (``memfd_create``); elsewhere the threshold is ignored.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        name: str = "process",
        shm_threshold: int | None = _shm.DEFAULT_THRESHOLD,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if max_workers <= 0:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        if shm_threshold is not None and (
            isinstance(shm_threshold, bool)
            or not isinstance(shm_threshold, int)
            or shm_threshold < 1
        ):
            raise ValueError(
                f"shm_threshold must be a size in bytes (an int of at least 1), or None to "
                f"send everything through the pipes; got {shm_threshold!r}"
            )
        super().__init__(name=name)
        self.max_workers = max_workers
        self.shm_threshold = shm_threshold if _shm.AVAILABLE else None
        self._pool = _Pool(max_workers, name, self._stats, self.shm_threshold)
        _live_pools.add(self._pool)
        _live_executors.add(self)
        # If the executor is dropped without shutdown, let its workers go when idle.
        self._finalizer = weakref.finalize(self, self._pool.close)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        self._check_open()
        function, call_args = split_bound_method(fn, args)
        fn_bytes = dumps_function(function)
        args_bytes, segment = _dumps_call(function, call_args, kwargs, self.shm_threshold)
        future: Future[T] = Future()
        self._pool.submit(future, function, fn_bytes, args_bytes, segment)
        return future

    def worker_pids(self) -> list[int]:
        """Process ids of the live worker processes (for diagnostics and tests)."""
        with self._pool.lock:
            return [w.pid for w in self._pool.workers if w.state is not _State.DEAD]

    def _shutdown_impl(self, *, wait: bool, cancel_futures: bool) -> None:
        if cancel_futures:
            self._pool.cancel_queued()
        self._pool.close()
        if wait:
            self._pool.join()

    def _join(self) -> None:
        self._pool.join()

    def _cancel_queued(self) -> int:
        return self._pool.cancel_queued()

    def _after_fork_in_child(self) -> None:
        """In a forked child: make this executor inert and closed; the parent's workers are
        left alone (their pipes are closed in the child only)."""
        self._shutdown_lock = threading.Lock()
        self._shutdown = True
        self._pool.after_fork_in_child()
        self._finalizer.detach()


def _after_fork_in_child() -> None:
    for executor in list(_live_executors):
        executor._after_fork_in_child()


def _at_exit() -> None:
    # Like the standard library: let queued and running tasks finish, then reap;
    # after a Ctrl-C during a wait the user wants out: stop the workers now.
    for pool in list(_live_pools):
        if waits_at_exit():
            pool.close()
        else:
            pool.terminate()
    for pool in list(_live_pools):
        pool.join()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
