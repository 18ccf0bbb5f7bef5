"""The worker agent: runs bundles on a host for one controller connection.

Started by a link (``remote/_ssh_link.py`` over SSH, ``remote/_local_link.py``
over pipes) and spoken to on stdin/stdout with the framed protocol of
``remote/_wire.py``. It can also be run by hand as ``python -m remote.worker
NAME SLOTS``, but links do not need the project installed on the host: they
send the source of this module and of ``_wire`` over the connection and
start it with a short ``python -c`` bootstrap, so any POSIX host with Python
and cloudpickle works. Hence this module imports only the standard library
and cloudpickle.

Design:

- The agent is one single-threaded process with a ``selectors`` loop over
  its stdin, the result pipes of its slot processes and a SIGCHLD wakeup pipe.
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
- Functions are cached by ``fn_id`` in the agent (bytes) and in each slot
  (unpickled); a slot receives the bytes with the first task that uses them.
- When stdin reaches EOF (controller gone, connection cut, channel closed),
  on SHUTDOWN, SIGTERM or SIGHUP the agent kills every slot's process group,
  removes its private temp dir and exits at once, even mid-task. SIGINT is
  ignored. Slots also get SIGKILL if the agent dies (Linux PDEATHSIG).
- Slots run with ``TMPDIR`` set to the agent's private temp dir (mode 0700),
  so temp files made by tasks are removed with it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from remote import _wire
else:  # shipped by a link: the bootstrap registered _wire under this name
    _wire = sys.modules.get("parallelize_agent_wire")
    if _wire is None:
        from remote import _wire

__all__ = ["main"]

_TMP_PREFIX = "parallelize-agent-"
_READ_SIZE = 1 << 20


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [])
            continue
        view = view[written:]


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


def _set_pdeathsig() -> None:
    """Ask Linux to SIGKILL this process when its parent (the agent) dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


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
        try:
            pid = int(entry[len(_TMP_PREFIX) :].split("-", 1)[0])
            path = os.path.join(base, entry)
            if os.lstat(path).st_uid != uid:
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, OSError):
            continue


class _Slot:
    __slots__ = ("attempt", "cancelled", "fns", "frames", "pid", "result_fd", "retired", "task_fd")

    def __init__(self, pid: int, task_fd: int, result_fd: int) -> None:
        self.pid = pid
        self.task_fd = task_fd  # agent -> slot: SUBMIT frames
        self.result_fd = result_fd  # slot -> agent: RESULT frames
        self.frames = _wire.FrameBuffer()
        self.attempt: int | None = None
        self.cancelled = False
        self.retired = False
        self.fns: set[int] = set()


class Agent:
    def __init__(self, name: str, slots: int) -> None:
        self.name = name
        self.target_slots = max(1, slots)
        self.hostname = socket.gethostname()
        # The protocol gets private copies of fds 0 and 1; fd 0 becomes /dev/null and fd 1
        # goes to stderr, so stray prints (here or in tasks) cannot corrupt the stream.
        self.in_fd = os.dup(0)
        self.out_fd = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(2, 1)
        os.close(devnull)
        os.set_inheritable(self.in_fd, False)
        os.set_inheritable(self.out_fd, False)
        self.fn_cache: dict[int, bytes] = {}
        self.children: dict[int, _Slot] = {}  # pid -> slot, until reaped
        self.by_fd: dict[int, _Slot] = {}
        self.idle: list[_Slot] = []
        self.running: dict[int, _Slot] = {}  # attempt id -> slot
        # Attempts submitted while every slot is busy, in order: attempt id -> (fn_id, args).
        self.queue: dict[int, tuple[int, bytes]] = {}
        self.tmpdir = ""
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.frames = _wire.FrameBuffer()
        self.closing = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
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
        _write_all(self.out_fd, _wire.encode_hello(info))
        if info["error"] is not None:
            os._exit(1)
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.selector.register(self.in_fd, selectors.EVENT_READ, None)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        for _ in range(self.target_slots):
            self.idle.append(self._fork_slot())

    def _on_term(self, signum: int, frame: Any) -> None:
        self.shutdown()

    def shutdown(self) -> None:
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
        os._exit(0)

    def run(self) -> None:
        while True:
            for key, _ in self.selector.select(timeout=5.0):
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
            self._reap(block=False)

    # -- controller side -----------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        try:
            _write_all(self.out_fd, frame)
        except OSError:
            self.shutdown()

    def _read_controller(self) -> None:
        try:
            data = os.read(self.in_fd, _READ_SIZE)
        except OSError:
            data = b""
        if not data:
            self.shutdown()
        for kind, body in self.frames.feed(data):
            if kind == _wire.SUBMIT:
                self._submit(body)
            elif kind == _wire.CANCEL:
                self._cancel(_wire.decode_cancel(body))
            elif kind == _wire.PING:
                self._send(_wire.encode_pong(_wire.decode_ping(body)))
            elif kind == _wire.SHUTDOWN:
                self.shutdown()

    def _submit(self, body: bytes) -> None:
        attempt_id, fn_id, fn, args = _wire.decode_submit(body)
        if fn is not None:
            self.fn_cache[fn_id] = fn
        else:
            fn = self.fn_cache.get(fn_id)
            if fn is None:
                self._send(
                    _wire.encode_lost(attempt_id, f"the agent has no function with id {fn_id}")
                )
                return
        if not self.idle and self._live_slots() >= self.target_slots:
            self.queue[attempt_id] = (fn_id, args)  # starts when a slot frees up
            return
        self._start(self.idle.pop() if self.idle else self._fork_slot(), attempt_id, fn_id, args)

    def _start(self, slot: _Slot, attempt_id: int, fn_id: int, args: bytes) -> None:
        fn = self.fn_cache[fn_id]
        slot.attempt = attempt_id
        self.running[attempt_id] = slot
        frame = _wire.encode_submit(attempt_id, fn_id, None if fn_id in slot.fns else fn, args)
        slot.fns.add(fn_id)
        with contextlib.suppress(OSError):  # a dead slot's reaping reports the attempt lost
            _write_all(slot.task_fd, frame)

    def _cancel(self, attempt_id: int) -> None:
        if self.queue.pop(attempt_id, None) is not None:
            return
        slot = self.running.pop(attempt_id, None)
        if slot is None:
            return  # finished already (its result is on the way) or never known
        slot.cancelled = True
        with contextlib.suppress(OSError):
            os.killpg(slot.pid, signal.SIGKILL)
        self._replenish()

    # -- slots ---------------------------------------------------------------------------

    def _live_slots(self) -> int:
        return sum(1 for s in self.children.values() if not (s.cancelled or s.retired))

    def _replenish(self) -> None:
        while self._live_slots() < self.target_slots:
            self.idle.append(self._fork_slot())
        self._dequeue()

    def _dequeue(self) -> None:
        while self.queue and self.idle:
            attempt_id = next(iter(self.queue))
            fn_id, args = self.queue.pop(attempt_id)
            self._start(self.idle.pop(), attempt_id, fn_id, args)

    def _fork_slot(self) -> _Slot:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the slot process
            code = 70
            try:
                os.close(task_w)  # the agent's ends: else this slot never sees EOF
                os.close(result_r)
                self._become_slot(task_r, result_w)
                code = _slot_loop(task_r, result_w, self.name, self.hostname)
            except BaseException:
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
            finally:
                os._exit(code)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        os.close(task_r)
        os.close(result_w)
        os.set_blocking(result_r, False)
        slot = _Slot(pid, task_w, result_r)
        self.children[pid] = slot
        self.by_fd[result_r] = slot
        self.selector.register(result_r, selectors.EVENT_READ, None)
        return slot

    def _become_slot(self, task_r: int, result_w: int) -> None:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _set_pdeathsig()
        agent_pid = os.getppid()
        with contextlib.suppress(OSError):
            self.selector.close()
        fds = [self.in_fd, self.out_fd, self.wake_r, self.wake_w]
        for other in self.children.values():
            fds += [other.task_fd, other.result_fd]
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if os.getppid() != agent_pid:
            os._exit(0)
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
            for kind, body in slot.frames.feed(data):
                if kind == _wire.RESULT:
                    self._slot_result(slot, kind, body)

    def _close_result(self, slot: _Slot) -> None:
        if slot.result_fd in self.by_fd:
            del self.by_fd[slot.result_fd]
            self.selector.unregister(slot.result_fd)
            os.close(slot.result_fd)

    def _slot_result(self, slot: _Slot, kind: int, body: bytes) -> None:
        attempt_id = slot.attempt
        slot.attempt = None
        if slot.cancelled or attempt_id is None:
            return
        self.running.pop(attempt_id, None)
        self._send(_wire.HEADER.pack(len(body) + 1, kind) + body)
        if len(self.idle) >= self.target_slots or slot.pid not in self.children:
            self._retire(slot)
        else:
            self.idle.append(slot)
            self._dequeue()

    def _retire(self, slot: _Slot) -> None:
        slot.retired = True
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
        if attempt_id is not None and not slot.cancelled:
            self.running.pop(attempt_id, None)
            self._send(_wire.encode_lost(attempt_id, _describe_status(status)))
        if not self.closing:
            self._replenish()
        return True


# -- inside a slot process ----------------------------------------------------------------


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, _READ_SIZE))
        if not chunk:
            return b""
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _slot_loop(task_fd: int, result_fd: int, name: str, hostname: str) -> int:
    fns: dict[int, Any] = {}
    origin = f"host {name!r} ({hostname}, pid {os.getpid()})"
    while True:
        head = _read_exact(task_fd, 5)
        if not head:
            return 0
        length, kind = _wire.HEADER.unpack(head)
        body = _read_exact(task_fd, length - 1)
        if kind != _wire.SUBMIT or len(body) != length - 1:
            return 0 if not body and length > 1 else 65
        attempt_id, fn_id, fn_payload, args_payload = _wire.decode_submit(body)
        _write_all(result_fd, _run(attempt_id, fn_id, fn_payload, args_payload, fns, origin))


def _run(
    attempt_id: int,
    fn_id: int,
    fn_payload: bytes | None,
    args_payload: bytes,
    fns: dict[int, Any],
    origin: str,
) -> bytes:
    started = time.perf_counter()
    stage = "loading the function and its arguments"
    try:
        fn = fns.get(fn_id)
        if fn is None:
            if fn_payload is None:
                raise RuntimeError(f"the agent sent no function for id {fn_id}")
            fn = pickle.loads(fn_payload)
            fns[fn_id] = fn
        args, kwargs = pickle.loads(args_payload)
        stage = "running the task"
        started = time.perf_counter()
        value = fn(*args, **kwargs)
    except BaseException as exc:
        duration = time.perf_counter() - started
        return _wire.encode_result(attempt_id, False, _dump_error(exc, origin, stage), duration)
    duration = time.perf_counter() - started
    try:
        payload = _dumps(value)
    except BaseException as exc:  # SystemExit in a __reduce__ too: the slot survives
        import importlib
        import operator

        message = (
            f"the task's return value (type {type(value).__module__}."
            f"{type(value).__qualname__}) could not be pickled to be sent back from {origin}: "
            f"{type(exc).__name__}: {exc}. Return picklable data instead."
        )
        tb_text = _format_tb(exc, origin, "pickling the result")

        class PicklingErrorByName:
            # parallelize.PicklingError, as under PROCESS. The slot cannot import
            # parallelize (only cloudpickle is required on hosts), so the error
            # is rebuilt by name where it is unpickled:
            # methodcaller("PicklingError", message)(import_module("parallelize._errors")).
            def __reduce__(self) -> tuple[Any, ...]:
                return (operator.methodcaller("PicklingError", message), (ModuleByName(),))

        class ModuleByName:
            def __reduce__(self) -> tuple[Any, ...]:
                return (importlib.import_module, ("parallelize._errors",))

        body = pickle.dumps((PicklingErrorByName(), tb_text), protocol=5)
        return _wire.encode_result(attempt_id, False, body, duration)
    return _wire.encode_result(attempt_id, True, payload, duration)


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(value, protocol=5)  # type: ignore[no-any-return]


def _format_tb(exc: BaseException, origin: str, stage: str) -> str:
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None and stage == "running the task":
        tb = tb.tb_next  # drop the agent's own frame
    lines = traceback.format_exception(type(exc), exc, tb)
    return f"Traceback on {origin} while {stage}:\n" + "".join(lines[1:] if lines else [])


def _dump_error(
    exc: BaseException, origin: str, stage: str, cause: BaseException | None = None
) -> bytes:
    tb_text = _format_tb(cause if cause is not None else exc, origin, stage)
    try:
        data = _dumps((exc, tb_text))
        pickle.loads(data)  # an exception that pickles may still fail to unpickle
        return data
    except BaseException:
        pass
    try:
        message = str(exc)
    except BaseException:
        message = "<str() failed>"
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    replacement = RuntimeError(
        f"{kind}: {message} (the original exception could not be pickled to be sent back "
        f"from {origin}; its traceback follows)"
    )
    return pickle.dumps((replacement, tb_text), protocol=5)


def main(argv: list[str] | None = None) -> None:
    """Run the agent: ``argv = [display_name, slots]``."""
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else socket.gethostname()
    slots = int(args[1]) if len(args) > 1 else (os.cpu_count() or 1)
    agent = Agent(name, slots)
    agent.start()
    try:
        agent.run()
    finally:
        agent.shutdown()


if __name__ == "__main__":
    main()
