"""Fixtures with real OpenSSH servers on loopback addresses (see ``sshd.py``).

``ssh_hosts`` (function scope) is the entry point for tests::

    def test_something(ssh_hosts):
        specs = ssh_hosts(2, slots=2)          # list[HostSpec]: host1 (127.0.0.2), host2 ...
        link = SSHLink(specs[0]); ...
        ssh_hosts.kill_host(specs[1])          # crash a host (sshd + its sessions)
        assert ssh_hosts.processes_on_host(specs[0]) == []   # no agents/slots left

Specs use the session's client key (``identity_file``), the current user, this
interpreter as ``python`` and ``strict_host_key_checking=False`` by default; pass
``strict_host_key_checking=True`` and use ``ssh_hosts.known_hosts`` (a known_hosts file
listing every test host) with ``SSHLink(spec, known_hosts_files=(...,))`` to test strict
checking. Tasks can read ``os.environ["PARALLELIZE_TEST_HOST"]`` ("host1", ...) to know
where they run. Killed hosts are restarted on the next ``ssh_hosts(...)`` call; at the end
of each test every process left on the hosts it used is killed (so one test's leak does
not break the next; assert on ``processes_on_host`` inside the test).

Without /usr/sbin/sshd the tests are skipped, except with CI=true where they fail.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import WAIT, FakeClock, FakePool
from faults import Faults, iptables_usable
from sshd import SshdPool, sshd_available

from remote._executor import RemoteExecutor
from remote._link import HostSpec
from remote._policies import RoundRobinPolicy


@pytest.fixture(scope="session")
def sshd_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdPool]:
    if not sshd_available():
        message = "OpenSSH server (/usr/sbin/sshd) is not installed: apt-get install openssh-server"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    pool = SshdPool(tmp_path_factory.mktemp("sshd"))
    yield pool
    pool.stop_all()


class SshHosts:
    """Callable fixture object; see the module docstring."""

    def __init__(self, pool: SshdPool) -> None:
        self.pool = pool
        self.used: list[HostSpec] = []

    def __call__(
        self,
        n: int = 1,
        *,
        slots: int = 2,
        strict_host_key_checking: bool = False,
        python: str | None = None,
        first: int = 1,
    ) -> list[HostSpec]:
        specs = self.pool.specs(
            n,
            slots=slots,
            strict_host_key_checking=strict_host_key_checking,
            python=python,
            first=first,
        )
        self.used += specs
        return specs

    @property
    def known_hosts(self) -> Path:
        return self.pool.known_hosts

    @property
    def client_key(self) -> Path:
        return self.pool.client_key

    def kill_host(self, spec: HostSpec) -> None:
        self.pool.kill_host(spec)

    def restart_host(self, spec: HostSpec) -> None:
        self.pool.restart_host(spec)

    def kill_sessions(self, spec: HostSpec) -> None:
        self.pool.kill_sessions(spec)

    def processes_on_host(self, spec: HostSpec) -> list[int]:
        return self.pool.processes_on_host(spec)

    def wait_no_processes(self, spec: HostSpec, timeout: float = 10.0) -> list[int]:
        """Poll until nothing runs on the host (returns [] then) or return what is left."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.processes_on_host(spec)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.02)


@pytest.fixture
def ssh_hosts(sshd_pool: SshdPool) -> Iterator[SshHosts]:
    hosts = SshHosts(sshd_pool)
    yield hosts
    for spec in {(s.host, s.port): s for s in hosts.used}.values():
        sshd_pool.kill_sessions(spec)


@pytest.fixture
def faults(sshd_pool: SshdPool) -> Iterator[Faults]:
    """Cut hosts off (iptables DROP, or SIGSTOP without it); healed after the test."""
    if not iptables_usable() and os.environ.get("CI", "").lower() == "true":
        pytest.fail("iptables is not usable (the test script installs it and runs as root)")
    found = Faults(sshd_pool)
    try:
        yield found
    finally:
        found.heal_all()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_executor(clock: FakeClock) -> Iterator[Callable[..., RemoteExecutor]]:
    """RemoteExecutors on a FakePool (see ``fakes.py``), torn down after the test."""
    made: list[RemoteExecutor] = []

    def make(pool: FakePool, **kwargs: Any) -> RemoteExecutor:
        kwargs.setdefault("heartbeat_interval", 3600.0)
        kwargs.setdefault("policy", RoundRobinPolicy())
        ex = RemoteExecutor(pool.specs, link_factory=pool.factory, clock=clock, **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=False, cancel_futures=True)
        ex._scheduler.abort("test over")
        ex._scheduler.join(WAIT)
        assert not ex._scheduler.alive
