"""A real network partition: an sshd in a network namespace of its own, cut off from the
controller while the controller exits. The agent must not outlive it (issue: agents alive 14
minutes after such a partition healed).

Needs root and iproute2 (``ip netns``); skipped with the reason otherwise. The namespace, its
veth pair and its sshd are created here and removed at the end; traffic only crosses that
veth pair.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import ENV_NAME, SESSION_ENV, SSHD, SshdPool, _keygen, processes_marked
from test_links import controller, wait_until

from remote._link import HostSpec

pytestmark = pytest.mark.timeout(90)

IP = shutil.which("ip") or "/usr/sbin/ip"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)


class Island:
    """A network namespace reached over a veth pair, running an sshd."""

    def __init__(self, pool: SshdPool, base: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = f"p7{tag}"
        self.host_if, self.ns_if = f"p7h{tag}", f"p7n{tag}"
        used = subprocess.run([IP, "-o", "addr"], capture_output=True, text=True).stdout
        subnet = next(n for n in range(17, 250) if f"10.213.{n}." not in used)
        self.host_addr, self.addr = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
        self.name = f"island{tag}"
        self.pool = pool
        self.sshd: subprocess.Popen[bytes] | None = None
        _run(IP, "netns", "add", self.ns)
        _run(IP, "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _run(IP, "link", "set", self.ns_if, "netns", self.ns)
        _run(IP, "addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        _run(IP, "link", "set", self.host_if, "up")
        self.in_ns(IP, "addr", "add", f"{self.addr}/30", "dev", self.ns_if)
        self.in_ns(IP, "link", "set", self.ns_if, "up")
        self.in_ns(IP, "link", "set", "lo", "up")
        key = base / "host_ed25519"
        _keygen(key)
        config = base / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.addr}:22",
                    f"HostKey {key}",
                    f"PidFile {base / 'sshd.pid'}",
                    f"AuthorizedKeysFile {pool.authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    f"SetEnv {ENV_NAME}={self.name} {SESSION_ENV}={pool.session}",
                    "",
                ]
            )
        )
        self.sshd = subprocess.Popen(
            [IP, "netns", "exec", self.ns, SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self._answers, timeout=15)

    def in_ns(self, *argv: str) -> None:
        _run(IP, "netns", "exec", self.ns, *argv)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.addr, 22), timeout=1.0) as sock:
                sock.settimeout(2.0)
                return sock.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def spec(self) -> HostSpec:
        return HostSpec(
            name=self.name,
            host=self.addr,
            user=self.pool.user,
            port=22,
            slots=2,
            python=sys.executable,
            identity_file=str(self.pool.client_key),
            strict_host_key_checking=False,
        )

    def agents(self) -> list[int]:
        """The agent and slot processes started through this island's sshd."""
        return processes_marked(self.name, self.pool.session)

    def sessions(self) -> list[int]:
        """sshd's per-connection processes (its children)."""
        assert self.sshd is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.sshd.pid)], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def cut(self) -> None:
        self.in_ns(IP, "link", "set", self.ns_if, "down")

    def heal(self) -> None:
        self.in_ns(IP, "link", "set", self.ns_if, "up")

    def remove(self) -> None:
        if self.sshd is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.sshd.pid, signal.SIGKILL)
            self.sshd.wait()
        for pid in self.agents():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run([IP, "netns", "del", self.ns], capture_output=True)
        subprocess.run([IP, "link", "del", self.host_if], capture_output=True)


@pytest.fixture
def island(sshd_pool: SshdPool, tmp_path: Path) -> Iterator[Island]:
    if os.geteuid() != 0 or not os.path.exists(IP) or not shutil.which("pgrep"):
        pytest.skip("a network partition needs root, iproute2 (ip netns) and pgrep")
    made = Island(sshd_pool, tmp_path)
    try:
        yield made
    finally:
        made.remove()


def test_partition_while_the_controller_exits_leaves_nothing(
    island: Island, tmp_path: Path
) -> None:
    limit = 2.0
    spec = island.spec()
    with controller(spec, limit, tmp_path) as ctl:
        wait_until(lambda: len(island.agents()) == 3)  # agent + 2 slots, one busy
        assert island.sessions()
        island.cut()
        ctl.kill()  # the controller exits during the partition: its FIN is lost
        ctl.wait()
        cut = time.monotonic()
        # Nothing from the controller: the agent kills its slots and exits after the limit.
        wait_until(lambda: island.agents() == [], timeout=2 * limit)
        # The agent counts its silence from the last frame it heard, up to one ping
        # interval (at most 1 s) before this moment: a crash would be immediate.
        assert time.monotonic() - cut >= limit - 1.0
    island.heal()
    # sshd's session learns the connection is gone from the first packet after the heal (the
    # controller's kernel answers it with a reset); then nothing is left on the host.
    wait_until(lambda: island.sessions() == [], timeout=30)
    assert island.agents() == []
