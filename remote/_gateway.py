"""Reaching a host through a jump host (``gateway = "user@bastion:22"``), with sshtunnel.

sshtunnel opens an SSH connection to the gateway and forwards a local port, bound to
127.0.0.1 only, to the target's SSH port as the gateway sees it; the link then speaks SSH
to the target through that port, end to end (the gateway never sees the session's
contents, and the target's host key is checked under the target's own name). Anyone on
this machine could connect to the forwarded port while it exists, but would only reach
the target's sshd, which still wants a key.

What this module adds to sshtunnel: our connect deadline (sshtunnel's own connect may
block for the OS's TCP timeout), strict host-key checking of the gateway against
known_hosts, and errors that say which problem it was (unreachable, timeout, host key,
authentication) and the fix, instead of sshtunnel's generic one; sshtunnel's own log
goes to the ``remote.ssh`` logger at DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import sshtunnel

from ._errors import HostErrorKind, HostUnavailableError

__all__ = ["GatewayTunnel"]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        logging.getLogger("remote.ssh").debug("sshtunnel: %s", record.getMessage())


def _kind_of(text: str) -> HostErrorKind:
    lower = text.lower()
    if "bad host key" in lower:
        return HostErrorKind.HOST_KEY_MISMATCH
    if "authentication" in lower or "could not open connection to gateway" in lower:
        return HostErrorKind.AUTH
    if "timed out" in lower or "timeout" in lower:
        return HostErrorKind.TIMEOUT
    return HostErrorKind.UNREACHABLE


class GatewayTunnel:
    """One forwarded port to ``target`` through ``gateway``; ``open`` returns the port."""

    def __init__(
        self,
        *,
        name: str,
        gateway: tuple[str | None, str, int],
        target: tuple[str, int],
        user: str,
        identity: Any,
        gateway_key: Any,
    ) -> None:
        self.name = name
        self.gw_user, self.gw_host, self.gw_port = gateway
        self.target = target
        self._capture = _Capture()
        log = logging.Logger(f"remote.gateway.{name}", logging.DEBUG)
        log.propagate = False
        log.addHandler(self._capture)
        self._forwarder = sshtunnel.SSHTunnelForwarder(
            (self.gw_host, self.gw_port),
            ssh_username=self.gw_user or user,
            ssh_pkey=identity,
            ssh_host_key=gateway_key,
            # None: never read ~/.ssh/config (the pool file is the whole configuration);
            # the library's annotation says str, its code takes None.
            ssh_config_file=None,  # pyright: ignore[reportArgumentType]
            allow_agent=True,
            remote_bind_address=target,
            local_bind_address=("127.0.0.1", 0),
            logger=log,
            mute_exceptions=False,
            set_keepalive=5.0,
        )
        self._lock = threading.Lock()
        self._closed = False

    @property
    def where(self) -> str:
        return f"{self.gw_host}:{self.gw_port}"

    def open(self, deadline: float) -> int:
        """Start the tunnel within *deadline* (a ``time.monotonic()`` value); the local port."""
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def start() -> None:
            try:
                self._forwarder.start()
                outcome["port"] = self._forwarder.local_bind_port
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=start, name=f"remote-gateway-{self.name}", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            self.close()
            raise HostUnavailableError(
                f"host {self.name!r}: the gateway {self.where} did not answer in time. "
                "Fix: check that the gateway is up and reachable, or raise connect_timeout.",
                kind=HostErrorKind.TIMEOUT,
                host=self.name,
            )
        if "port" in outcome and self._forwarder.tunnel_is_up.get(
            ("127.0.0.1", outcome["port"]), True
        ):
            return int(outcome["port"])
        self.close()
        detail = "; ".join(line for line in self._capture.lines if line) or str(
            outcome.get("error", "the tunnel did not come up")
        )
        kind = _kind_of(detail)
        fix = {
            HostErrorKind.HOST_KEY_MISMATCH: "verify the gateway's new key and update "
            "known_hosts (`ssh-keygen -R`)",
            HostErrorKind.AUTH: "make sure your key is in the gateway's authorized_keys (and "
            "that the gateway may forward to the host: AllowTcpForwarding)",
            HostErrorKind.TIMEOUT: "check that the gateway is up, or raise connect_timeout",
            HostErrorKind.UNREACHABLE: "check the gateway's address and port, and that it can "
            "reach the host",
        }[kind]
        raise HostUnavailableError(
            f"host {self.name!r}: through the gateway {self.where}: {detail}. Fix: {fix}.",
            kind=kind,
            host=self.name,
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(Exception):
            self._forwarder.stop(force=True)
