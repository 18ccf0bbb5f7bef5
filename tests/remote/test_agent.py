"""The worker agent spoken to directly over pipes (``python -m remote.worker``), and _wire."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from hypothesis import given
from hypothesis import strategies as st

from remote import _wire

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


class AgentProc:
    def __init__(self, slots: int = 2, silence_limit: float | None = None) -> None:
        argv = [sys.executable, "-m", "remote.worker", "testhost", str(slots)]
        if silence_limit is not None:
            argv.append(str(silence_limit))
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
        )
        self.frames = _wire.FrameBuffer()
        self.pending: list[tuple[int, bytes]] = []
        assert self.proc.stdout is not None
        assert os.read(self.proc.stdout.fileno(), len(_wire.MAGIC)) == _wire.MAGIC
        kind, body = self.recv()
        assert kind == _wire.HELLO
        self.hello = _wire.decode_hello(body)

    def send(self, frame: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(frame)
        self.proc.stdin.flush()

    def recv(self) -> tuple[int, bytes]:
        assert self.proc.stdout is not None
        while not self.pending:
            data = os.read(self.proc.stdout.fileno(), 65536)
            assert data, "agent closed its stdout"
            self.pending += self.frames.feed(data)
        return self.pending.pop(0)

    def submit(self, attempt: int, fn: Any, *args: Any, fn_id: int | None = None) -> None:
        payload = cloudpickle.dumps(fn)
        self.send(
            _wire.encode_submit(
                attempt,
                fn_id if fn_id is not None else attempt,
                payload,
                cloudpickle.dumps((args, {})),
            )
        )

    def children(self) -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[1]) == self.proc.pid and stat[0] != "Z":
                    out.append(int(entry))
        return out


@pytest.fixture
def agent() -> Iterator[AgentProc]:
    proc = AgentProc()
    yield proc
    if proc.proc.poll() is None:
        proc.proc.kill()
    proc.proc.wait()
    for stream in (proc.proc.stdin, proc.proc.stdout, proc.proc.stderr):
        if stream is not None:
            stream.close()


def expect_protocol_error(agent: AgentProc) -> str:
    """The agent answers a bad frame with ERROR, says why on stderr and exits with 2."""
    kind, body = agent.recv()
    while kind in (_wire.RESULT, _wire.OUTPUT):  # answers to frames before the bad one
        kind, body = agent.recv()
    assert kind == _wire.ERROR, _wire.message_name(kind)
    message = _wire.decode_error(body)
    assert agent.proc.wait(timeout=10) == 2
    assert agent.proc.stderr is not None
    stderr = agent.proc.stderr.read().decode()
    assert "protocol error" in stderr and message in stderr
    return message


def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_hello(agent: AgentProc) -> None:
    info = agent.hello
    assert info["python"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    assert info["cloudpickle"] == cloudpickle.__version__
    assert info["pid"] == agent.proc.pid
    assert info["error"] is None
    assert os.path.isdir(info["tmpdir"])
    wait_until(lambda: len(agent.children()) == 2)  # pre-forked slots


def test_submit_result_ping(agent: AgentProc) -> None:
    agent.submit(1, lambda a, b: a + b, 2, 3)
    kind, body = agent.recv()
    assert kind == _wire.RESULT
    attempt, ok, payload, duration = _wire.decode_result(body)
    assert (attempt, ok, cloudpickle.loads(payload)) == (1, True, 5)
    assert duration >= 0
    agent.send(_wire.encode_ping(99))
    kind, body = agent.recv()
    assert kind == _wire.PONG and _wire.decode_ping(body) == 99


def test_function_cache_and_unknown_fn_id(agent: AgentProc) -> None:
    agent.submit(1, lambda: "cached", fn_id=5)
    assert _wire.decode_result(agent.recv()[1])[1]
    for attempt in range(2, 6):  # no function bytes: served from the agent's cache
        agent.send(_wire.encode_submit(attempt, 5, None, cloudpickle.dumps(((), {}))))
        _, ok, payload, _ = _wire.decode_result(agent.recv()[1])
        assert ok and cloudpickle.loads(payload) == "cached"
    # The agent keeps what the controller sent until told to evict: a function it was never
    # sent means the two sides are out of step, a protocol error (not a lost attempt).
    agent.send(_wire.encode_submit(9, 77, None, cloudpickle.dumps(((), {}))))
    message = expect_protocol_error(agent)
    assert "attempt 9" in message and "id 77" in message and "out of step" in message


def test_crash_is_lost_and_slot_replaced(agent: AgentProc) -> None:
    agent.submit(1, os._exit, 9)
    kind, body = agent.recv()
    assert kind == _wire.LOST and _wire.decode_lost(body) == (1, "process exited with code 9")
    wait_until(lambda: len(agent.children()) == 2)
    agent.submit(2, lambda: os.kill(os.getpid(), signal.SIGKILL))
    assert _wire.decode_lost(agent.recv()[1]) == (2, "killed by signal SIGKILL")
    agent.submit(3, lambda: "ok")
    assert _wire.decode_result(agent.recv()[1])[:2] == (3, True)


def test_eof_kills_children_mid_task_and_removes_tmpdir(agent: AgentProc, tmp_path: Path) -> None:
    marker = tmp_path / "pid"

    def busy(path: str) -> None:
        import tempfile

        Path(tempfile.gettempdir(), "junk").write_text("x")  # in the agent's private dir
        Path(path).write_text(str(os.getpid()))
        time.sleep(300)

    agent.submit(1, busy, str(marker))
    wait_until(marker.exists)
    task_pid = int(marker.read_text())
    tmpdir = agent.hello["tmpdir"]
    assert os.listdir(tmpdir) == ["junk"]
    assert agent.proc.stdin is not None
    agent.proc.stdin.close()  # the controller is gone
    assert agent.proc.wait(timeout=10) == 0
    wait_until(lambda: not Path(f"/proc/{task_pid}").exists() or "Z" in _state(task_pid))
    assert not os.path.exists(tmpdir)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_sigint_is_ignored_and_shutdown_exits(agent: AgentProc) -> None:
    os.kill(agent.proc.pid, signal.SIGINT)
    agent.send(_wire.encode_ping(1))
    assert agent.recv()[0] == _wire.PONG
    slots = agent.children()
    agent.send(_wire.encode_shutdown())
    assert agent.proc.wait(timeout=10) == 0
    wait_until(lambda: all(_state(p) in ("gone", "Z") for p in slots))


def test_sigkilled_agent_takes_its_slots_along(agent: AgentProc) -> None:
    slots = agent.children()
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait()
    wait_until(lambda: all(_state(p) in ("gone", "Z") for p in slots))


def test_cancel_running_and_queued(agent: AgentProc) -> None:
    for attempt in (1, 2, 3):  # two slots: attempt 3 waits in the agent's queue
        agent.submit(attempt, time.sleep, 300, fn_id=1)
    agent.send(_wire.encode_cancel(3))
    agent.send(_wire.encode_cancel(1))
    agent.send(_wire.encode_cancel(2))
    agent.submit(4, lambda: "next")
    kind, body = agent.recv()
    assert kind == _wire.RESULT and _wire.decode_result(body)[:2] == (4, True)
    wait_until(lambda: len(agent.children()) == 2)


# -- _wire ------------------------------------------------------------------------------


@given(
    attempt=st.integers(0, 2**64 - 1),
    fn_id=st.integers(0, 2**64 - 1),
    fn=st.none() | st.binary(max_size=200),
    args=st.binary(min_size=1, max_size=200),  # a pickle is never empty
    split=st.integers(0, 1000),
)
def test_submit_roundtrip_in_pieces(
    attempt: int, fn_id: int, fn: bytes | None, args: bytes, split: int
) -> None:
    frame = _wire.encode_submit(attempt, fn_id, fn, args)
    buffer = _wire.FrameBuffer()
    cut = split % (len(frame) + 1)
    frames = buffer.feed(frame[:cut]) + buffer.feed(frame[cut:] + _wire.encode_ping(7))
    assert [kind for kind, _ in frames] == [_wire.SUBMIT, _wire.PING]
    assert _wire.decode_submit(frames[0][1]) == (attempt, fn_id, fn, args)
    assert buffer.pending() == 0


@given(ok=st.booleans(), payload=st.binary(max_size=100), duration=st.floats(0, 1e6))
def test_result_and_lost_roundtrip(ok: bool, payload: bytes, duration: float) -> None:
    buffer = _wire.FrameBuffer()
    data = _wire.encode_result(5, ok, payload, duration) + _wire.encode_lost(6, "gone ✗")
    (k1, b1), (k2, b2) = buffer.feed(data)
    assert (k1, k2) == (_wire.RESULT, _wire.LOST)
    assert _wire.decode_result(b1) == (5, ok, payload, duration)
    assert _wire.decode_lost(b2) == (6, "gone ✗")


def test_malformed_frames() -> None:
    with pytest.raises(_wire.ProtocolError):
        _wire.decode_result(b"\x00")
    with pytest.raises(_wire.ProtocolError):
        _wire.FrameBuffer().feed(b"\x00\x00\x00\x00\x01")
    with pytest.raises(_wire.ProtocolError):
        _wire.decode_hello(b"[1]")


def test_malformed_frames_are_precise() -> None:
    submit = _wire.encode_submit(1, 2, b"fn", b"args")[5:]
    assert _wire.decode_submit(submit) == (1, 2, b"fn", b"args")
    with pytest.raises(_wire.ProtocolError, match="declares a function of 200 bytes"):
        _wire.decode_submit(submit[:17] + (200).to_bytes(4, "big") + submit[21:])
    with pytest.raises(_wire.ProtocolError, match="no argument payload"):  # was EOFError
        _wire.decode_submit(submit[:17] + (6).to_bytes(4, "big") + submit[21:])
    with pytest.raises(_wire.ProtocolError, match="no function but a function length"):
        _wire.decode_submit(submit[:16] + b"\x00" + submit[17:])
    with pytest.raises(_wire.ProtocolError, match="shorter than"):
        _wire.decode_submit(submit[:10])
    with pytest.raises(_wire.ProtocolError, match=r"PING: 9 bytes \(expected exactly 8\)"):
        _wire.decode_ping(_wire.encode_ping(3)[5:] + b"x")
    with pytest.raises(_wire.ProtocolError, match="SHUTDOWN"):
        _wire.decode_shutdown(b"x")
    with pytest.raises(_wire.ProtocolError, match="EVICT"):
        _wire.decode_evict(b"1234567")
    assert _wire.decode_evict(_wire.encode_evict([1, 2**64 - 1])[5:]) == [1, 2**64 - 1]
    assert _wire.decode_output(_wire.encode_output(_wire.STDOUT, b"hi\n")[5:]) == (1, b"hi\n")
    assert _wire.decode_error(_wire.encode_error("bad ✗")[5:]) == "bad ✗"


# -- protocol errors ------------------------------------------------------------------------

ARGS = cloudpickle.dumps(((), {}))


@pytest.mark.parametrize(
    ("frame", "named"),
    [
        (_wire.encode_ping(1) + b"", None),  # valid: the agent answers, then the bad one
        (_wire.HEADER.pack(10, _wire.PING) + b"\x00" * 9, "PING: 9 bytes"),
        (_wire.HEADER.pack(1, 99), "unexpected unknown(99) frame"),
        (_wire.HEADER.pack(2, _wire.SHUTDOWN) + b"x", "SHUTDOWN"),
        (_wire.encode_evict([12345]), "EVICT names function 12345"),
        (b"\x00\x00\x00\x00\x02", "zero length"),
        (
            # A SUBMIT whose function length runs past the frame.
            _wire.HEADER.pack(22 + len(ARGS), _wire.SUBMIT)
            + (1).to_bytes(8, "big")
            + (1).to_bytes(8, "big")
            + b"\x01"
            + (len(ARGS) + 5).to_bytes(4, "big")
            + ARGS,
            f"declares a function of {len(ARGS) + 5} bytes",
        ),
    ],
)
def test_bad_frame_gets_error_and_nonzero_exit(
    agent: AgentProc, frame: bytes, named: str | None
) -> None:
    if named is None:
        agent.send(frame)
        assert agent.recv()[0] == _wire.PONG
        return
    agent.submit(1, lambda: "before")
    assert _wire.decode_result(agent.recv()[1])[:2] == (1, True)
    slots = agent.children()
    agent.send(frame)
    assert named in expect_protocol_error(agent)
    wait_until(lambda: all(_state(p) in ("gone", "Z") for p in slots))


def test_evict_drops_functions_from_agent_and_slots() -> None:
    agent = AgentProc(slots=1)
    try:
        for fn_id in (1, 2):
            agent.submit(fn_id, lambda: None, fn_id=fn_id)
            assert _wire.decode_result(agent.recv()[1])[:2] == (fn_id, True)

        def slot_cache() -> list[int]:
            frame = sys._getframe(1)
            while "fns" not in frame.f_locals:  # the slot's cache, in its caller's frame
                assert frame.f_back is not None
                frame = frame.f_back
            return sorted(frame.f_locals["fns"])

        agent.submit(3, slot_cache, fn_id=3)
        assert cloudpickle.loads(_wire.decode_result(agent.recv()[1])[2]) == [1, 2, 3]
        agent.send(_wire.encode_evict([1, 3]))
        agent.submit(4, slot_cache, fn_id=4)  # the slot gets the evictions before this task
        assert cloudpickle.loads(_wire.decode_result(agent.recv()[1])[2]) == [2, 4]
        agent.send(_wire.encode_submit(5, 2, None, ARGS))  # still cached
        assert _wire.decode_result(agent.recv()[1])[:2] == (5, True)
        # Evicted while its attempt waits in the agent's queue (one slot, busy): the attempt
        # still runs, and the slot drops the function again before its next task.
        agent.send(
            _wire.encode_submit(
                7, 7, cloudpickle.dumps(time.sleep), cloudpickle.dumps(((0.5,), {}))
            )
            + _wire.encode_submit(8, 8, cloudpickle.dumps(lambda: "queued"), ARGS)
            + _wire.encode_evict([8])
        )
        assert _wire.decode_result(agent.recv()[1])[:2] == (7, True)
        _, ok, payload, _ = _wire.decode_result(agent.recv()[1])
        assert ok and cloudpickle.loads(payload) == "queued"
        agent.submit(9, slot_cache, fn_id=9)
        assert cloudpickle.loads(_wire.decode_result(agent.recv()[1])[2]) == [2, 4, 7, 9]
        agent.send(_wire.encode_submit(6, 1, None, ARGS))  # evicted: out of step
        assert "names id 1" in expect_protocol_error(agent)
    finally:
        agent.proc.kill()
        agent.proc.wait()


def test_agent_refuses_a_cache_above_the_limit(agent: AgentProc) -> None:
    # A controller that never evicts is out of step: the agent stops at the bound.
    fn = cloudpickle.dumps(int)
    frames = b"".join(
        _wire.encode_submit(n, n, fn, ARGS) for n in range(1, _wire.FN_CACHE_MAX_COUNT + 2)
    )
    agent.send(frames)
    message = expect_protocol_error(agent)
    assert f"{_wire.FN_CACHE_MAX_COUNT + 1} functions" in message and "did not evict" in message


def _result_fd() -> int:
    frame = sys._getframe(1)
    while "result_fd" not in frame.f_locals:  # the slot loop's pipe to the agent
        assert frame.f_back is not None
        frame = frame.f_back
    return int(frame.f_locals["result_fd"])


_result_fd.__module__ = "__main__"  # travel by value: the slot cannot import this module


def test_lost_frame_from_a_slot_is_forwarded(agent: AgentProc) -> None:
    def report_lost() -> None:
        from remote import _wire

        os.write(_result_fd(), _wire.encode_lost(0, "slot says no"))
        time.sleep(300)

    agent.submit(1, report_lost)
    assert agent.recv() == (_wire.LOST, _wire.encode_lost(1, "slot says no")[5:])
    agent.submit(2, lambda: "next")
    assert _wire.decode_result(agent.recv()[1])[:2] == (2, True)


def test_garbage_from_a_slot_loses_only_its_attempt(agent: AgentProc) -> None:
    def garbage() -> None:
        os.write(_result_fd(), b"\x00\x00\x00\x00\x04")
        time.sleep(300)

    agent.submit(1, garbage)
    kind, body = agent.recv()
    assert kind == _wire.LOST
    attempt, reason = _wire.decode_lost(body)
    assert attempt == 1 and "protocol error in the slot's output" in reason
    agent.submit(2, lambda: "next")
    assert _wire.decode_result(agent.recv()[1])[:2] == (2, True)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_wire.HEADER.pack(100, _wire.SUBMIT) + b"x" * 10, "short SUBMIT frame: 10 of its 99"),
        (b"\x00\x00", "2-byte frame header"),
        (_wire.encode_submit(1, 2, None, ARGS), "names function 2 without sending it"),
        (
            _wire.HEADER.pack(22 + len(ARGS), _wire.SUBMIT)
            + (1).to_bytes(8, "big")
            + (2).to_bytes(8, "big")
            + b"\x01"
            + len(ARGS).to_bytes(4, "big")
            + ARGS,
            "no argument payload",  # the function length eats the arguments: was EOFError
        ),
        (_wire.encode_ping(1), "unexpected PING frame"),
    ],
)
def test_slot_reports_corrupt_task_frame_as_lost(data: bytes, reason: str) -> None:
    from remote import worker

    task_r, task_w = os.pipe()
    result_r, result_w = os.pipe()
    try:
        os.write(task_w, data)
        os.close(task_w)
        assert worker._slot_loop(task_r, result_w, False) == 65
        os.close(result_w)
        frames = _wire.FrameBuffer().feed(os.read(result_r, 65536))
        assert [kind for kind, _ in frames] == [_wire.LOST]
        attempt, message = _wire.decode_lost(frames[0][1])
        assert attempt == 0  # the agent fills in the attempt its slot runs
        assert message.startswith("protocol error in the task frame sent to the slot")
        assert reason in message
    finally:
        for fd in (task_r, result_r):
            os.close(fd)


# -- silence limit, output, titles ---------------------------------------------------------


def test_silent_controller_makes_agent_exit_with_its_slots() -> None:
    agent = AgentProc(slots=2, silence_limit=1.0)
    try:
        agent.submit(1, time.sleep, 300)
        wait_until(lambda: len(agent.children()) == 2)
        slots = agent.children()
        tmpdir = agent.hello["tmpdir"]
        # Pinged, it stays well past the limit ...
        until = time.monotonic() + 2.5
        token = 0
        while time.monotonic() < until:
            token += 1
            agent.send(_wire.encode_ping(token))
            assert agent.recv() == (_wire.PONG, _wire.encode_pong(token)[5:])
            time.sleep(0.2)
        assert agent.proc.poll() is None
        # ... silent, it goes, with its slots and temp dir, and says why.
        assert agent.proc.wait(timeout=10) == 3
        assert agent.proc.stderr is not None
        stderr = agent.proc.stderr.read().decode()
        assert "nothing heard from the controller" in stderr and "limit 1 s" in stderr
        wait_until(lambda: all(_state(p) in ("gone", "Z") for p in slots))
        assert not os.path.exists(tmpdir)
    finally:
        agent.proc.kill()
        agent.proc.wait()


def test_task_stdout_travels_as_output_before_the_result(agent: AgentProc) -> None:
    def chatty() -> int:
        import subprocess

        print("line one")
        print("partial", end="")
        subprocess.run(["echo", "from a child"], check=True)
        return 7

    agent.submit(1, chatty)
    out = b""
    while True:
        kind, body = agent.recv()
        if kind != _wire.OUTPUT:
            break
        stream, data = _wire.decode_output(body)
        assert stream == _wire.STDOUT
        out += data
    assert kind == _wire.RESULT and cloudpickle.loads(_wire.decode_result(body)[2]) == 7
    assert out == b"line one\npartialfrom a child\n"


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_titles(agent: AgentProc) -> None:
    wait_until(lambda: len(agent.children()) == 2)
    pid = agent.proc.pid
    assert _comm(pid) == "parallelize-agent testhost"[:15]
    assert _cmdline(pid).rstrip(b"\0") == b"parallelize-agent testhost"
    for slot in agent.children():
        assert _comm(slot) == "parallelize-slot testhost"[:15]
        assert _cmdline(slot).rstrip(b"\0") == b"parallelize-slot testhost"


def test_slot_state_machine() -> None:
    from remote.worker import SlotState, _Slot

    slot = _Slot(1, -1, -1, -1)
    assert slot.state is SlotState.IDLE and slot.live
    slot.move(SlotState.RUNNING)
    slot.move(SlotState.KILLED)
    assert not slot.live
    with pytest.raises(RuntimeError, match="KILLED -> RUNNING"):
        slot.move(SlotState.RUNNING)
    slot.move(SlotState.GONE)
    with pytest.raises(RuntimeError):
        slot.move(SlotState.IDLE)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_idle_slot_gives_memory_back_after_a_large_call() -> None:
    def resident_mib() -> float:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)

    def churn_keeping_a_few() -> float:
        # ~200 MB in 2 kB objects, every 1000th kept alive (as caches do): without a heap
        # trim, glibc keeps nearly all of it resident.
        import builtins

        made = [bytes(2000) for _ in range(100_000)]
        builtins.__dict__.setdefault("_kept_by_test", []).extend(made[::1000])
        del made
        return resident_mib()

    agent = AgentProc(slots=1)
    try:
        agent.submit(1, resident_mib, fn_id=1)
        fresh = cloudpickle.loads(_wire.decode_result(agent.recv()[1])[2])
        agent.submit(2, churn_keeping_a_few)
        grown = cloudpickle.loads(_wire.decode_result(agent.recv()[1])[2])
        assert grown > fresh + 150, (fresh, grown)  # the call itself did hold the memory
        attempt = 2
        seen: list[float] = []

        def back_to_fresh() -> bool:
            nonlocal attempt
            attempt += 1
            agent.submit(attempt, resident_mib, fn_id=1)  # one cached function, not hundreds
            seen.append(cloudpickle.loads(_wire.decode_result(agent.recv()[1])[2]))
            return seen[-1] < fresh + 30

        wait_until(back_to_fresh)
    finally:
        agent.proc.kill()
        agent.proc.wait()
