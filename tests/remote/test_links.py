"""SSHLink and LocalLink against real agents (real sshd servers for SSH; no mocks)."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
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
from remote._agent_client import AgentLink, LinkState, LinkTiming
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
    assert "while running the call" in tb  # (the scheduler names the host)
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


def test_frozen_agent_is_suspect_then_down(ssh_hosts: Any) -> None:
    spec = ssh_hosts(1)[0]
    events = EventRecorder()
    link = SSHLink(spec, keepalive_interval=0.2, timing=LinkTiming(stall_timeout=3.0))
    link.connect(events)
    agent = int(link.hello["pid"])
    wait_until(lambda: link.srtt is not None, 10)  # pings answered: healthy
    assert link.state is LinkState.UP
    os.kill(agent, signal.SIGSTOP)
    try:
        events.wait(lambda: bool(events.health), timeout=10)
        suspect, silent = events.health[0]
        assert suspect and silent < 3.0
        assert link.state is LinkState.SUSPECT
        events.wait(lambda: bool(events.down), timeout=15)
        assert "no response" in events.down[0]
        assert link.state in (LinkState.DOWN, LinkState.CLOSED)
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


def test_silent_host_prints_no_paramiko_traceback(tmp_path: Path) -> None:
    # A plain script, no logging configured: paramiko's own ERROR records (a banner
    # timeout, with a traceback) must not reach stderr; our error says what happened.
    script = tmp_path / "silent.py"
    script.write_text(
        "import socket\n"
        "from remote._link import HostSpec\n"
        "from remote._ssh_link import SSHLink\n"
        "from remote import HostUnavailableError\n"
        "server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen(8)\n"
        "spec = HostSpec(name='silent', host='127.0.0.1', port=server.getsockname()[1],\n"
        "                strict_host_key_checking=False)\n"
        "class Events:\n"
        "    def __getattr__(self, name): return lambda *a: None\n"
        "try:\n"
        "    SSHLink(spec, connect_timeout=1.0).connect(Events())\n"
        "except HostUnavailableError as exc:\n"
        "    print('error:', exc.kind.value)\n"
    )
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert proc.stdout.startswith("error: "), (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") <= 2, proc.stderr


def test_gateway_with_unknown_host_key_is_refused_under_strict_checking(
    ssh_hosts: Any,
) -> None:
    gateway, target = ssh_hosts(2, strict_host_key_checking=True)
    via = replace(target, gateway=f"{gateway.user}@{gateway.host}:{gateway.port}")
    # only the user's own known_hosts files, where the test hosts are not
    link = SSHLink(via)
    with pytest.raises(HostUnavailableError) as info:
        link.connect(EventRecorder())
    assert info.value.kind.value == "host key unknown"
    assert "the gateway" in str(info.value) and "Fix:" in str(info.value)


def test_gateway_tunnel_is_closed_with_the_link(ssh_hosts: Any) -> None:
    gateway, target = ssh_hosts(2)
    via = replace(target, gateway=f"{gateway.user}@{gateway.host}:{gateway.port}")
    link = SSHLink(via)
    link.connect(EventRecorder())
    assert link._tunnel is not None
    port = link._tunnel._forwarder.local_bind_port
    link.close()
    assert link.wait_closed(30)

    def port_closed() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) != 0

    wait_until(port_closed, 20)


# -- task stdout, noisy shells, protocol errors, bounded caches, silence limit ---------------


def test_task_stdout_reaches_the_callers_stdout(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    def chatty(n: int) -> int:
        import subprocess

        print(f"hello {n}")
        sys.stdout.write("no newline, then ")
        sys.stdout.flush()
        subprocess.run(["echo", "a child process"], check=True)  # writes to fd 1 directly
        print("to stderr", file=sys.stderr)
        print("tail", end="")  # a partial last line: passed on when the task ends
        return n

    harness.link.submit(1, 1, *call(chatty, 5))
    assert harness.events.result(1) == (True, 5)
    name = harness.link.spec.name
    out, err = capsys.readouterr()
    assert out == f"[{name}] hello 5\n[{name}] no newline, then a child process\n[{name}] tail\n"
    while f"[{name}] to stderr" not in err:  # stderr has its own, asynchronous path
        time.sleep(0.02)
        err += capsys.readouterr().err
    assert "hello" not in err


def _noisy_python(tmp_path: Path, then: str) -> str:
    """A "python" whose start prints a banner on stdout first, as a chatty ~/.bashrc does."""
    script = tmp_path / "noisypython"
    script.write_text(f"#!/bin/sh\necho 'Welcome to the machine!'\n{then}\n")
    script.chmod(0o755)
    return str(script)


def _link_for(kind: str, python: str, request: pytest.FixtureRequest, **kwargs: Any) -> AgentLink:
    if kind == "local":
        return LocalLink(replace(embedded_pool(1).hosts[0], python=python), **kwargs)
    return SSHLink(request.getfixturevalue("ssh_hosts")(1, python=python)[0], **kwargs)


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_noisy_shell_before_the_agent_is_skipped(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    link = _link_for(kind, _noisy_python(tmp_path, f'exec {sys.executable} "$@"'), request)
    events = EventRecorder()
    link.connect(events)
    try:
        link.submit(1, 1, *call(lambda: "works"))
        assert events.result(1) == (True, "works")
    finally:
        link.close()
    assert "remote shell printed 24 bytes" in caplog.text and "Welcome" in caplog.text


@pytest.mark.parametrize("kind", ["local", "ssh"])
@pytest.mark.parametrize(
    ("then", "what"),
    [
        ("exit 1", "no agent started"),
        ("cat > /dev/null", "the agent did not start within 2 s"),  # the shell eats stdin
    ],
)
def test_noisy_shell_that_stops_the_agent_is_named(
    kind: str, then: str, what: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    link = _link_for(kind, _noisy_python(tmp_path, then), request, connect_timeout=2.0)
    with pytest.raises(HostUnavailableError) as info:
        link.connect(EventRecorder())
    message = str(info.value)
    assert "the remote shell printed text before the agent started" in message
    assert what in message and "Welcome to the machine!" in message
    assert "print nothing for non-interactive shells" in message
    assert "did not start within 10" not in message


def test_bad_frame_takes_the_link_down_with_the_agents_reason(harness: Harness) -> None:
    from remote import _wire

    wait_until(lambda: len(harness.processes()) == 3)  # slots start after HELLO
    with harness.link._write_lock:
        harness.link._write(_wire.HEADER.pack(10, _wire.PING) + b"\x00" * 9)
    harness.events.wait(lambda: bool(harness.events.down))
    reason = harness.events.down[0]
    assert "the worker agent rejected a frame" in reason
    assert "malformed PING: 9 bytes (expected exactly 8)" in reason
    wait_until(lambda: harness.processes() == [])


def test_a_thousand_functions_keep_the_caches_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from remote import _wire

    marker = f"local-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PARALLELIZE_TEST_HOST", marker)
    link = LocalLink(embedded_pool(2).hosts[0])
    events = EventRecorder()
    link.connect(events)
    try:
        count = 1000
        args = cloudpickle.dumps(((1,), {}))
        for n in range(1, count + 1):
            link.submit(n, n, cloudpickle.dumps(lambda x, n=n: x + n), args)
        events.wait(lambda: len(events.results) == count, timeout=60)
        assert all(events.result(n) == (True, 1 + n) for n in range(1, count + 1))

        def slot_cache_size() -> int:
            frame = sys._getframe(1)
            while "fns" not in frame.f_locals:  # the slot's cache, in its caller's frame
                assert frame.f_back is not None
                frame = frame.f_back
            return len(frame.f_locals["fns"])

        probe = cloudpickle.dumps(slot_cache_size)
        for attempt in (count + 1, count + 2):
            link.submit(attempt, count + 1, probe, cloudpickle.dumps(((), {})))
        # Each slot ran ~500 distinct functions; forwarded evictions keep it at the bound.
        sizes = [events.result(attempt)[1] for attempt in (count + 1, count + 2)]
        assert all(0 < size <= _wire.FN_CACHE_MAX_COUNT for size in sizes), sizes
        # The agent refuses to hold more than the bound (test_agent), so a link still up
        # after 1,000 functions kept it in step.
        assert len(link._fns_sent) == _wire.FN_CACHE_MAX_COUNT
        assert link.alive and not events.down
    finally:
        link.close()


ROOT = Path(__file__).resolve().parents[2]
CONTROLLER = r"""
import pickle, sys, time, cloudpickle
from remote._local_link import LocalLink
from remote._ssh_link import SSHLink

class Events:
    def on_result(self, *args): pass
    def on_attempt_lost(self, *args): pass
    def on_link_down(self, link, reason): print("down", reason, flush=True)

spec = pickle.loads(bytes.fromhex(sys.argv[1]))
link = (LocalLink if spec.is_local else SSHLink)(spec)
link.silence_limit = float(sys.argv[2])
link.connect(Events())
link.submit(1, 1, cloudpickle.dumps(time.sleep), cloudpickle.dumps(((300,), {})))
print("agent", link.hello["pid"], flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def controller(spec: HostSpec, limit: float, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A controller process (CONTROLLER) whose agent on *spec* runs a 300 s call; yields once
    the agent has started, and kills the controller at the end (if it still runs)."""
    stderr = open(tmp_path / "controller.err", "wb")  # noqa: SIM115
    ctl = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, pickle.dumps(spec).hex(), str(limit)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=ROOT,
    )
    stderr.close()
    try:
        assert ctl.stdout is not None
        line = ctl.stdout.readline().decode()
        assert line.startswith("agent "), (tmp_path / "controller.err").read_text()
        yield ctl
    finally:
        if ctl.poll() is None:
            ctl.kill()
        ctl.wait()
        if ctl.stdout is not None:
            ctl.stdout.close()


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_frozen_controller_leaves_no_orphans(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A controller that stops sending (SIGSTOP: its pipe or connection stays open, as in a
    partition) loses its agent and slots within about 2 x the silence limit."""
    limit = 2.0
    spec: HostSpec
    if kind == "local":
        marker = f"local-{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv("PARALLELIZE_TEST_HOST", marker)
        spec = embedded_pool(2).hosts[0]
        found = lambda: processes_marked(marker)  # noqa: E731
    else:
        ssh_hosts = request.getfixturevalue("ssh_hosts")
        spec = ssh_hosts(1, slots=2)[0]
        found = lambda: ssh_hosts.processes_on_host(spec)  # noqa: E731
    with controller(spec, limit, tmp_path) as ctl:

        def on_host() -> list[int]:
            return [pid for pid in found() if pid != ctl.pid]

        wait_until(lambda: len(on_host()) == 3)  # agent + 2 slots (one running the task)
        # While the controller runs, its pings keep the agent well past the limit.
        until = time.monotonic() + 2 * limit
        while time.monotonic() < until:
            assert len(on_host()) == 3
            time.sleep(0.1)
        os.kill(ctl.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_until(lambda: on_host() == [], timeout=2 * limit)
        # The agent counts its silence from the last frame it heard, up to one ping
        # interval (at most 1 s) before this moment: a crash would be immediate.
        assert time.monotonic() - stopped >= limit - 1.0
