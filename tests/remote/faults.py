"""Messy faults for the REMOTE tests: cut a test sshd host off the network, or freeze it.

``blackhole`` drops every packet to and from one test host's sshd (its loopback address
and port) with iptables, as a cut cable or a dead switch port would: connections stay
open, nothing arrives, nothing is refused. It needs root and iptables (the test script
installs it); without them ``freeze`` (SIGSTOP of the host's sshd session processes,
agent and slots) is the fallback, which looks the same from the controller's side.
Rules carry a comment naming the test session, so a crashed run's rules can be found
and are removed by ``heal_all`` at the end of every test. Only 127.0.0.0/8 addresses
of the suite's own sshd servers are ever named in a rule.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess

from sshd import SshdPool

from remote._link import HostSpec

__all__ = ["Faults", "iptables_usable"]

IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"


def iptables_usable() -> bool:
    if os.geteuid() != 0 or not os.path.exists(IPTABLES):
        return False
    probe = subprocess.run(
        [IPTABLES, "-w", "-L", "INPUT", "-n"], capture_output=True, check=False, timeout=30
    )
    return probe.returncode == 0


class Faults:
    """Cuts test hosts off and heals them; see the module docstring."""

    def __init__(self, pool: SshdPool) -> None:
        self.pool = pool
        self.comment = f"parallelize-test-{pool.session[:12]}"
        self.rules: list[list[str]] = []
        self.frozen: list[int] = []
        self.use_iptables = iptables_usable()

    def _rules_for(self, spec: HostSpec) -> list[list[str]]:
        if not spec.host.startswith("127."):  # never touch anything but loopback
            raise ValueError(f"{spec.host} is not a loopback test host")
        tail = ["-m", "comment", "--comment", self.comment, "-j", "DROP"]
        return [
            ["INPUT", "-p", "tcp", "-d", spec.host, "--dport", str(spec.port), *tail],
            ["INPUT", "-p", "tcp", "-s", spec.host, "--sport", str(spec.port), *tail],
        ]

    def blackhole(self, spec: HostSpec) -> str:
        """Cut the host off; returns how ("iptables" or "SIGSTOP")."""
        if not self.use_iptables:
            self.freeze(spec)
            return "SIGSTOP"
        for rule in self._rules_for(spec):
            subprocess.run([IPTABLES, "-w", "-I", *rule], check=True, timeout=30)
            self.rules.append(rule)
        return "iptables"

    def freeze(self, spec: HostSpec) -> None:
        """SIGSTOP everything the host runs for its sessions (sshd children, agent, slots)."""
        host = self.pool._by_spec(spec)
        for pid in self.pool._session_tree(host):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
                self.frozen.append(pid)

    def heal_all(self) -> None:
        for rule in reversed(self.rules):
            subprocess.run([IPTABLES, "-w", "-D", *rule], check=False, timeout=30)
        self.rules.clear()
        for pid in self.frozen:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        self.frozen.clear()
