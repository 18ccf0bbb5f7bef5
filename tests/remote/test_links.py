"""SSHLink and LocalLink against real agents (real sshd servers for SSH; no mocks)."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from sshd import EventRecorder, processes_marked

from parallelize import PicklingError
from remote._agent_client import AgentLink
from remote._link import HostSpec, HostUnavailableError
from remote._local_link import LocalLink
from remote._pool_config import embedded_pool
from remote._ssh_link import SSHLink

pytestmark = pytest.mark.timeout(60)

ARGS0 = cloudpickle.dumps(((), {}))


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[bytes, bytes]:
    return cloudpickle.dumps(fn), cloudpickle.dumps((args, kwargs))


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Harness:
    """One connected link plus how to find its processes."""

    def __init__(self, link: AgentLink, processes: Callable[[], list[int]]) -> None:
        self.link = link
        self.events = EventRecorder()
        self.processes = processes
        link.connect(self.events)

    @property
    def tmpdir(self) -> str:
        return str(self.link.hello["tmpdir"])


@pytest.fixture(params=["local", "ssh"])
def harness(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    if request.param == "local":
        marker = f"local-{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv("PARALLELIZE_TEST_HOST", marker)  # inherited by the local agent
        spec = embedded_pool(2).hosts[0]
        h = Harness(LocalLink(spec), lambda: processes_marked(marker))
    else:
        ssh_hosts = request.getfixturevalue("ssh_hosts")
        spec = ssh_hosts(1, slots=2)[0]
        h = Harness(SSHLink(spec), lambda: ssh_hosts.processes_on_host(spec))
    yield h
    h.link.close()


def test_roundtrip_and_function_cache(harness: Harness) -> None:
    fn, args = call(lambda x, y=1: (x * y, os.environ.get("PARALLELIZE_TEST_HOST")), 21, y=2)
    harness.link.submit(1, 7, fn, args)
    ok, value = harness.events.result(1)
    assert ok
    assert value[0] == 42
    # Same fn_id again: the link sends only the args; the agent serves it from its cache.
    for attempt in range(2, 12):
        harness.link.submit(attempt, 7, fn, cloudpickle.dumps(((attempt,), {})))
    for attempt in range(2, 12):
        assert harness.events.result(attempt) == (True, (attempt, value[1]))
    assert harness.events.results[1][2] >= 0.0
    assert harness.link.alive


def test_ssh_task_runs_on_its_host(ssh_hosts: Any) -> None:
    specs = ssh_hosts(2)
    for spec in specs:
        events = EventRecorder()
        link = SSHLink(spec)
        link.connect(events)
        try:
            link.submit(1, 1, *call(lambda: os.environ["PARALLELIZE_TEST_HOST"]))
            assert events.result(1) == (True, spec.name)
        finally:
            link.close()


def test_user_exception_carries_traceback_naming_host(harness: Harness) -> None:
    def failing(n: int) -> None:
        raise KeyError(f"missing {n}")

    harness.link.submit(1, 1, *call(failing, 5))
    ok, (exc, tb) = harness.events.result(1)
    assert not ok
    assert isinstance(exc, KeyError) and exc.args == ("missing 5",)
    assert f"host {harness.link.spec.name!r}" in tb
    assert "failing" in tb and "KeyError" in tb


def test_unpicklable_exception_becomes_runtime_error(harness: Harness) -> None:
    def failing() -> None:
        class Local(Exception):
            def __init__(self, a: int, b: int) -> None:  # does not unpickle
                super().__init__(f"{a}-{b}")
                self.lock = threading.Lock()

        raise Local(1, 2)

    harness.link.submit(1, 1, *call(failing))
    ok, (exc, tb) = harness.events.result(1)
    assert not ok
    assert type(exc) is RuntimeError
    assert "Local" in str(exc) and "1-2" in str(exc)
    assert "raise Local(1, 2)" in tb or "failing" in tb


def test_unpicklable_result_is_a_clear_error(harness: Harness) -> None:
    harness.link.submit(1, 1, *call(threading.Lock))
    ok, (exc, _tb) = harness.events.result(1)
    assert not ok
    assert isinstance(exc, PicklingError)  # as under PROCESS (see tests/test_error_rules.py)
    assert "could not be pickled" in str(exc)
    assert harness.link.alive


def test_print_in_task_does_not_corrupt_the_stream(harness: Harness) -> None:
    def noisy() -> int:
        print("hello from the task" * 1000)
        os.write(1, b"\x00\x00\x00\x05\x04garbage")
        return 7

    harness.link.submit(1, 1, *call(noisy))
    assert harness.events.result(1) == (True, 7)


def test_large_payloads(harness: Harness) -> None:
    blob = os.urandom(3 << 20)
    harness.link.submit(1, 1, *call(lambda b: b[::-1], blob))
    assert harness.events.result(1) == (True, blob[::-1])


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("exit", "process exited with code 3"),
        ("kill", "killed by signal SIGKILL"),
    ],
)
def test_dying_process_loses_only_its_attempt(harness: Harness, how: str, reason: str) -> None:
    def die(how: str) -> None:
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)

    harness.link.submit(1, 1, *call(die, how))
    assert harness.events.lost_reason(1) == reason
    assert harness.link.alive
    harness.link.submit(2, 2, *call(lambda: "still fine"))
    assert harness.events.result(2) == (True, "still fine")
    assert not harness.events.down


def test_cancel_kills_the_process(harness: Harness, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def stubborn(path: str) -> None:
        import subprocess

        child = subprocess.Popen(["sleep", "300"])  # same process group: killed too
        with open(path + ".tmp", "w") as handle:
            handle.write(f"{os.getpid()} {child.pid}")
        os.rename(path + ".tmp", path)
        time.sleep(300)

    harness.link.submit(1, 1, *call(stubborn, str(pid_file)))
    wait_until(pid_file.exists)
    pids = [int(p) for p in pid_file.read_text().split()]
    assert all(pid_alive(p) for p in pids)
    harness.link.cancel(1)
    wait_until(lambda: not any(pid_alive(p) for p in pids))
    # The slot was replaced; the link goes on, and nothing is reported for attempt 1.
    harness.link.submit(2, 2, *call(lambda: "after cancel"))
    assert harness.events.result(2) == (True, "after cancel")
    assert 1 not in harness.events.results and 1 not in harness.events.lost


def test_more_attempts_than_slots_queue(harness: Harness) -> None:
    fn, _ = call(lambda i: (time.sleep(0.05), i)[1])
    for attempt in range(1, 9):
        harness.link.submit(attempt, 1, fn, cloudpickle.dumps(((attempt,), {})))
    harness.link.cancel(8)  # still queued: dropped without an event
    for attempt in range(1, 8):
        assert harness.events.result(attempt) == (True, attempt)
    assert 8 not in harness.events.results
    assert len(harness.processes()) == 3  # agent + 2 slots


def test_ping(harness: Harness) -> None:
    rtts = [harness.link.ping() for _ in range(5)]
    assert all(0 < rtt < 1.0 for rtt in rtts)


def test_close_leaves_no_processes_or_files(harness: Harness, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def busy(path: str) -> None:
        import tempfile

        with open(os.path.join(tempfile.gettempdir(), "scratch"), "w") as handle:
            handle.write("x")
        with open(path, "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(300)

    harness.link.submit(1, 1, *call(busy, str(pid_file)))
    wait_until(pid_file.exists)
    tmpdir = harness.tmpdir
    assert os.listdir(tmpdir) == ["scratch"]
    assert oct(os.stat(tmpdir).st_mode & 0o777) == "0o700"
    assert len(harness.processes()) == 3
    harness.link.close()
    harness.link.close()  # idempotent
    wait_until(lambda: harness.processes() == [])
    assert not os.path.exists(tmpdir)
    assert not harness.link.alive
    assert harness.events.down == []  # a deliberate close is not a link failure
    with pytest.raises(HostUnavailableError):
        harness.link.submit(2, 1, *call(int))


def test_ssh_connection_cut_cleans_up_host(ssh_hosts: Any, tmp_path: Path) -> None:
    spec = ssh_hosts(1)[0]
    events = EventRecorder()
    link = SSHLink(spec)
    link.connect(events)
    pid_file = tmp_path / "pid"

    def busy(path: str) -> None:
        with open(path, "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(300)

    link.submit(1, 1, *call(busy, str(pid_file)))
    wait_until(pid_file.exists)
    tmpdir = link.hello["tmpdir"]
    # Cut the TCP connection under paramiko's feet (as a network failure would).
    link._transports[-1].sock.shutdown(socket.SHUT_RDWR)
    events.wait(lambda: bool(events.down))
    assert spec.name in events.down[0]
    assert ssh_hosts.wait_no_processes(spec) == []
    assert not os.path.exists(tmpdir)
    assert not link.alive
    link.close()
    assert len(events.down) == 1


def test_link_down_when_host_is_killed(ssh_hosts: Any) -> None:
    spec = ssh_hosts(1)[0]
    events = EventRecorder()
    link = SSHLink(spec)
    link.connect(events)
    link.submit(1, 1, *call(time.sleep, 300))
    ssh_hosts.kill_host(spec)
    events.wait(lambda: bool(events.down), timeout=15)
    assert "host1" in events.down[0]
    assert not link.alive
    with pytest.raises(HostUnavailableError):
        link.submit(2, 1, *call(int))
    link.close()
    assert len(events.down) == 1
    assert 1 not in events.results and 1 not in events.lost  # covered by on_link_down
    ssh_hosts.restart_host(spec)
    again = SSHLink(spec)
    again.connect(EventRecorder())
    again.close()


def test_frozen_agent_is_detected_by_heartbeat(ssh_hosts: Any) -> None:
    spec = ssh_hosts(1)[0]
    events = EventRecorder()
    link = SSHLink(spec, keepalive_interval=0.2, heartbeat_timeout=1.0)
    link.connect(events)
    agent = int(link.hello["pid"])
    os.kill(agent, signal.SIGSTOP)
    try:
        events.wait(lambda: bool(events.down), timeout=15)
        assert "no response" in events.down[0]
    finally:
        os.kill(agent, signal.SIGCONT)
        link.close()
    assert ssh_hosts.wait_no_processes(spec) == []


def test_strict_host_key_checking(ssh_hosts: Any) -> None:
    spec = ssh_hosts(1, strict_host_key_checking=True)[0]
    with pytest.raises(HostUnavailableError) as info:
        SSHLink(spec).connect(EventRecorder())
    message = str(info.value)
    assert "unknown host key" in message and "host1" in message
    assert "strict_host_key_checking = false" in message
    link = SSHLink(spec, known_hosts_files=(str(ssh_hosts.known_hosts),))
    link.connect(EventRecorder())
    link.close()


def test_changed_host_key_is_refused(ssh_hosts: Any, tmp_path: Path) -> None:
    spec = ssh_hosts(1, strict_host_key_checking=False)[0]
    lines = ssh_hosts.known_hosts.read_text().splitlines()
    entry = next(line for line in lines if line.startswith(f"[{spec.host}]:{spec.port} "))
    other = next(line for line in lines if line != entry) if len(lines) > 1 else None
    if other is None:
        ssh_hosts(2)
        other = ssh_hosts.known_hosts.read_text().splitlines()[1]
    forged = tmp_path / "known_hosts"
    forged.write_text(f"[{spec.host}]:{spec.port} " + " ".join(other.split()[1:]) + "\n")
    with pytest.raises(HostUnavailableError, match="HOST KEY MISMATCH"):
        SSHLink(spec, known_hosts_files=(str(forged),)).connect(EventRecorder())


def test_unreachable_host_fails_within_connect_timeout() -> None:
    # A listener that accepts TCP but never speaks SSH: the handshake must time out.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        spec = HostSpec(name="silent", host="127.0.0.1", port=port, strict_host_key_checking=False)
        started = time.monotonic()
        with pytest.raises(HostUnavailableError, match="silent"):
            SSHLink(spec, connect_timeout=1.5).connect(EventRecorder())
        assert time.monotonic() - started < 5.0
    # Nothing listening at all: refused at once.
    spec = replace(spec, name="refused")
    with pytest.raises(HostUnavailableError, match=r"refused.*cannot connect"):
        SSHLink(spec, connect_timeout=1.5).connect(EventRecorder())


def test_authentication_failure_is_clear(ssh_hosts: Any, tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    spec = replace(ssh_hosts(1)[0], identity_file=str(key))
    env_home = os.environ.get("HOME")
    with pytest.raises(HostUnavailableError, match="authentication"):
        SSHLink(spec).connect(EventRecorder())
    assert os.environ.get("HOME") == env_home


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fakepython"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"{body}\n"
        "code = sys.argv[2]\n"
        "sys.argv = ['-c'] + sys.argv[3:]\n"
        "exec(compile(code, '<string>', 'exec'), {'__name__': '__main__'})\n"
    )
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_python_version_mismatch(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    python = _fake_python(tmp_path, "sys.version_info = (3, 7, 1, 'final', 0)")
    link: AgentLink
    if kind == "local":
        link = LocalLink(replace(embedded_pool(1).hosts[0], python=python))
    else:
        link = SSHLink(request.getfixturevalue("ssh_hosts")(1, python=python)[0])
    with pytest.raises(HostUnavailableError) as info:
        link.connect(EventRecorder())
    message = str(info.value)
    assert link.spec.name in message
    assert "Python 3.7.1" in message and "python = " in message
    assert not link.alive


def test_missing_cloudpickle(ssh_hosts: Any, tmp_path: Path) -> None:
    python = _fake_python(tmp_path, "sys.modules['cloudpickle'] = None")
    spec = ssh_hosts(1, python=python)[0]
    with pytest.raises(HostUnavailableError, match=r"host1.*cloudpickle.*pip install cloudpickle"):
        SSHLink(spec).connect(EventRecorder())
    assert ssh_hosts.wait_no_processes(spec) == []


def test_python_not_found(ssh_hosts: Any) -> None:
    spec = ssh_hosts(1, python="/nonexistent/python3")[0]
    with pytest.raises(HostUnavailableError, match=r"host1.*exited before saying hello"):
        SSHLink(spec).connect(EventRecorder())


def test_result_payload_is_the_pickled_value(harness: Harness) -> None:
    harness.link.submit(1, 1, *call(dict, a=1))
    ok, payload, duration = (
        harness.events.wait(lambda: 1 in harness.events.results) or (harness.events.results[1])
    )
    assert ok and pickle.loads(payload) == {"a": 1} and duration >= 0


def test_ssh_through_a_gateway(ssh_hosts: Any) -> None:
    gateway, target = ssh_hosts(2)
    via = replace(target, gateway=f"{gateway.user}@{gateway.host}:{gateway.port}")
    events = EventRecorder()
    link = SSHLink(via)
    link.connect(events)
    try:
        link.submit(1, 1, *call(lambda: os.environ["PARALLELIZE_TEST_HOST"]))
        assert events.result(1) == (True, target.name)
        # The connection runs through the gateway: cutting the gateway's sessions
        # takes the link down although the target host is untouched.
        ssh_hosts.kill_sessions(gateway)
        events.wait(lambda: bool(events.down))
    finally:
        link.close()


def test_unreachable_gateway_is_named(ssh_hosts: Any) -> None:
    (target,) = ssh_hosts(1)
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    via = replace(target, gateway=f"{target.user}@127.0.0.1:{free_port}")
    with pytest.raises(HostUnavailableError, match=rf"127\.0\.0\.1:{free_port}"):
        SSHLink(via, connect_timeout=5).connect(EventRecorder())
