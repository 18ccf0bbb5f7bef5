"""Real OpenSSH servers for the REMOTE tests: one ``sshd`` per loopback address.

Host N (``hostN``, N >= 1) is an sshd listening on ``127.0.0.{N+1}`` and a free port, with
its own ed25519 host key, accepting the session's client key for the current user, and
``SetEnv PARALLELIZE_TEST_HOST=hostN PARALLELIZE_TEST_SESSION=<uuid>`` so a task (and
this module) can tell where a process runs and which test run started it (several test
runs may share a machine: each only ever looks at or kills its own processes). Servers are
started lazily, reused for the whole session and restarted after
:meth:`SshdPool.kill_host`.

Usage (see ``tests/remote/conftest.py`` for the fixtures)::

    specs = ssh_hosts(2, slots=2)            # list[HostSpec] for host1, host2
    ssh_hosts.kill_host(specs[0])            # sshd + every process of its sessions
    ssh_hosts.processes_on_host(specs[0])    # pids still alive there (agent, slots, ...)
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parallelize import RemoteTraceback
from parallelize.ext import failure_exception
from remote._link import HostSpec

__all__ = ["SSHD", "EventRecorder", "SshdPool", "processes_marked", "sshd_available"]

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
ENV_NAME = "PARALLELIZE_TEST_HOST"
SESSION_ENV = "PARALLELIZE_TEST_SESSION"


def sshd_available() -> bool:
    return os.path.exists(SSHD) and os.path.exists(SSH_KEYGEN)


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "parallelize-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class SshdHost:
    index: int
    directory: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_file = self.directory / "sshd.log"

    @property
    def name(self) -> str:
        return f"host{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.{self.index + 1}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _read_proc(pid: int, what: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{what}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None if gone."""
    raw = _read_proc(pid, "stat")
    if not raw:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def processes_marked(value: str, session: str | None = None) -> list[int]:
    """Live (non-zombie) processes whose environment has PARALLELIZE_TEST_HOST=value (and
    PARALLELIZE_TEST_SESSION=session when given: test runs may share the machine)."""
    markers = {f"{ENV_NAME}={value}".encode()}
    if session is not None:
        markers.add(f"{SESSION_ENV}={session}".encode())
    found = []
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        if not markers.issubset(_read_proc(pid, "environ").split(b"\0")):
            continue
        stat = _stat(pid)
        if stat is not None and stat[0] not in ("Z", "X"):
            found.append(pid)
    return found


class SshdPool:
    """Starts and tracks the test sshd servers; all files live under *base*."""

    def __init__(self, base: Path, python: str | None = None) -> None:
        self.base = base
        self.python = python or sys.executable
        self.user = getpass.getuser()
        self.session = uuid.uuid4().hex  # tells this run's processes from concurrent runs'
        self.client_key = base / "client_ed25519"
        self.authorized_keys = base / "authorized_keys"
        self.known_hosts = base / "known_hosts"
        self._hosts: dict[int, SshdHost] = {}
        self._lock = threading.Lock()
        _keygen(self.client_key)
        shutil.copy(f"{self.client_key}.pub", self.authorized_keys)
        self.known_hosts.write_text("")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    # -- servers ---------------------------------------------------------------------------

    def host(self, index: int) -> SshdHost:
        """Host *index* (1-based), started if it is not running."""
        with self._lock:
            host = self._hosts.get(index)
            if host is None:
                directory = self.base / f"host{index}"
                directory.mkdir()
                _keygen(directory / "host_ed25519")
                address = f"127.0.0.{index + 1}"
                host = SshdHost(index, directory, _free_port(address))
                self._hosts[index] = host
                pub = (directory / "host_ed25519.pub").read_text().split()
                with open(self.known_hosts, "a") as handle:
                    handle.write(f"[{address}]:{host.port} {pub[0]} {pub[1]}\n")
            if not host.running:
                self._start(host)
            return host

    def _start(self, host: SshdHost) -> None:
        config = host.directory / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {host.address}:{host.port}",
                    f"HostKey {host.directory / 'host_ed25519'}",
                    f"PidFile {host.directory / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org",
                    f"SetEnv {ENV_NAME}={host.name} {SESSION_ENV}={self.session}",
                    "MaxStartups 100:30:200",
                    "MaxSessions 100",
                    "LogLevel INFO",
                    "",
                ]
            )
        )
        log = open(host.log_file, "ab")  # noqa: SIM115 - owned by the process
        try:
            host.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 15.0
        while True:
            if host.proc.poll() is not None:
                raise RuntimeError(
                    f"sshd for {host.name} exited with {host.proc.returncode}: "
                    f"{host.log_file.read_text(errors='replace')[-2000:]}"
                )
            try:
                with socket.create_connection((host.address, host.port), timeout=1.0) as sock:
                    sock.settimeout(2.0)
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd for {host.name} did not accept connections in 15 s")
            time.sleep(0.02)  # polling for readiness, bounded by the deadline

    def specs(
        self,
        n: int,
        *,
        slots: int = 2,
        strict_host_key_checking: bool = False,
        python: str | None = None,
        first: int = 1,
    ) -> list[HostSpec]:
        """HostSpecs for hosts ``first .. first+n-1`` (started as needed)."""
        out = []
        for index in range(first, first + n):
            host = self.host(index)
            out.append(
                HostSpec(
                    name=host.name,
                    host=host.address,
                    user=self.user,
                    port=host.port,
                    slots=slots,
                    python=python or self.python,
                    identity_file=str(self.client_key),
                    strict_host_key_checking=strict_host_key_checking,
                )
            )
        return out

    @staticmethod
    def write_pool_file(specs: list[HostSpec], path: Path) -> Path:
        """A pool file naming *specs* (for scripts that use the default REMOTE executor)."""
        lines = ["[defaults]", f'identity_file = "{specs[0].identity_file}"', ""]
        for spec in specs:
            lines += [
                f"[hosts.{spec.name}]",
                f'host = "{spec.host}"',
                f"port = {spec.port}",
                f'user = "{spec.user}"',
                f"slots = {spec.slots}",
                f'python = "{spec.python}"',
                "strict_host_key_checking = false",
                "",
            ]
        path.write_text("\n".join(lines))
        return path

    def _by_spec(self, spec: HostSpec) -> SshdHost:
        for host in self._hosts.values():
            if host.address == spec.host and host.port == spec.port:
                return host
        raise KeyError(f"{spec.name} is not a test sshd host")

    # -- processes ---------------------------------------------------------------------------

    def processes_on_host(self, spec: HostSpec) -> list[int]:
        """Live (non-zombie) processes started by that host's sessions: the agents, their
        slots and anything the tasks spawned (found by PARALLELIZE_TEST_HOST=hostN)."""
        return processes_marked(self._by_spec(spec).name, self.session)

    def _session_tree(self, host: SshdHost) -> list[int]:
        """The sshd's descendants (session processes) and the host's marked processes."""
        pids = set()
        if host.proc is not None:
            parents: dict[int, list[int]] = {}
            for pid in _all_pids():
                stat = _stat(pid)
                if stat is not None and stat[0] not in ("Z", "X"):
                    parents.setdefault(stat[1], []).append(pid)
            todo = [host.proc.pid]
            while todo:
                for child in parents.get(todo.pop(), []):
                    if child not in pids:
                        pids.add(child)
                        todo.append(child)
        spec = HostSpec(name=host.name, host=host.address, port=host.port)
        pids.update(self.processes_on_host(spec))
        return sorted(pids)

    def kill_sessions(self, spec: HostSpec) -> None:
        """SIGKILL every session process of the host (the sshd keeps running)."""
        host = self._by_spec(spec)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            victims = self._session_tree(host)
            if not victims:
                return
            for pid in victims:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)  # let the kernel finish them before looking again

    def kill_host(self, spec: HostSpec) -> None:
        """SIGKILL the host's sshd and every process of its sessions, as if it crashed."""
        host = self._by_spec(spec)
        victims = self._session_tree(host)
        if host.proc is not None:
            with contextlib.suppress(OSError):
                os.kill(host.proc.pid, signal.SIGKILL)
        for pid in victims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if host.proc is not None:
            host.proc.wait()

    def restart_host(self, spec: HostSpec) -> None:
        self.host(self._by_spec(spec).index)

    def stop_all(self) -> None:
        for host in list(self._hosts.values()):
            spec = HostSpec(name=host.name, host=host.address, port=host.port)
            with contextlib.suppress(Exception):
                self.kill_host(spec)


class EventRecorder:
    """A LinkEvents that records events; tests wait on it instead of sleeping."""

    def __init__(self) -> None:
        self.results: dict[int, tuple[bool, bytes, float]] = {}
        self.lost: dict[int, str] = {}
        self.down: list[str] = []
        self.health: list[tuple[bool, float]] = []
        self.order: list[tuple[str, int]] = []
        self._cond = threading.Condition()

    def on_result(
        self, link: object, attempt_id: int, ok: bool, payload: bytes, duration: float
    ) -> None:
        with self._cond:
            self.results[attempt_id] = (ok, payload, duration)
            self.order.append(("result", attempt_id))
            self._cond.notify_all()

    def on_attempt_lost(self, link: object, attempt_id: int, reason: str) -> None:
        with self._cond:
            self.lost[attempt_id] = reason
            self.order.append(("lost", attempt_id))
            self._cond.notify_all()

    def on_link_down(self, link: object, reason: str) -> None:
        with self._cond:
            self.down.append(reason)
            self.order.append(("down", 0))
            self._cond.notify_all()

    def on_link_health(self, link: object, suspect: bool, silent: float) -> None:
        with self._cond:
            self.health.append((suspect, silent))
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out after {timeout} s; events so far: {self.order}")

    def result(self, attempt_id: int, timeout: float = 30.0) -> tuple[bool, Any]:
        """Wait for the attempt's result -> (True, value) or (False, (exception, traceback
        text)), a failure decoded as the scheduler decodes it."""
        self.wait(lambda: attempt_id in self.results or attempt_id in self.lost, timeout)
        if attempt_id in self.lost:
            raise AssertionError(f"attempt {attempt_id} lost: {self.lost[attempt_id]}")
        ok, payload, _ = self.results[attempt_id]
        if ok:
            return ok, pickle.loads(payload)
        exc = failure_exception(payload, "the call", "the host")
        cause = exc.__cause__
        return ok, (exc, cause.tb if isinstance(cause, RemoteTraceback) else "")

    def lost_reason(self, attempt_id: int, timeout: float = 30.0) -> str:
        self.wait(lambda: attempt_id in self.results or attempt_id in self.lost, timeout)
        if attempt_id in self.results:
            raise AssertionError(f"attempt {attempt_id} was not lost: {self.results[attempt_id]}")
        return self.lost[attempt_id]
