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
    def __init__(self, slots: int = 2) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "remote.worker", "testhost", str(slots)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
        )
        self.frames = _wire.FrameBuffer()
        self.pending: list[tuple[int, bytes]] = []
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
    for stream in (proc.proc.stdin, proc.proc.stdout):
        if stream is not None:
            stream.close()


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
    agent.send(_wire.encode_submit(9, 77, None, cloudpickle.dumps(((), {}))))
    kind, body = agent.recv()
    assert kind == _wire.LOST and _wire.decode_lost(body) == (
        9,
        "the agent has no function with id 77",
    )


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
    args=st.binary(max_size=200),
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
