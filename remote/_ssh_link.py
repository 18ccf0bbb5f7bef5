"""SSHLink: one persistent paramiko connection per host, one exec channel running the agent.

- The TCP socket is made here (connect timeout, TCP_NODELAY, SO_KEEPALIVE) and handed to
  paramiko; a ``gateway`` ("user@host:port") is reached with sshtunnel, which forwards a
  port on 127.0.0.1 to the host's SSH port through the gateway (see ``_gateway``); the SSH
  session to the host then runs end to end through it.
- Key exchange prefers curve25519 (the post-quantum default costs ~135 ms per connect).
- Host keys are checked against ``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts``
  (plus ``known_hosts_files``) unless the spec says ``strict_host_key_checking = false``,
  in which case unknown keys are accepted for this connection only (no file is written).
- Authentication: the spec's identity file, then the ssh-agent's keys, then the default
  ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa``.
- The agent is started as ``exec PYTHON -c BOOTSTRAP`` where PYTHON is the validated spec
  value passed through ``shlex.quote``; its source then arrives over the channel.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paramiko

from ._agent_client import AgentLink, LinkTiming, bootstrap_code
from ._errors import HostErrorKind, HostUnavailableError
from ._gateway import GatewayTunnel
from ._link import HostSpec

__all__ = ["SSHLink", "parse_gateway", "remote_command"]


class _ToOurLogger(logging.Handler):
    """paramiko logs failures we report ourselves (as HostUnavailableError, with the fix)
    at ERROR with full tracebacks, which Python's last-resort handler prints for a script
    that configured no logging. They go to the ``remote.ssh`` logger at DEBUG instead."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("remote.ssh").debug(
            "paramiko %s: %s",
            record.levelname.lower(),
            record.getMessage(),
            exc_info=record.exc_info,
        )


def _route_paramiko_logging() -> None:
    paramiko_log = logging.getLogger("paramiko")
    if paramiko_log.handlers or paramiko_log.level != logging.NOTSET:
        return  # configured by the user: leave it alone
    paramiko_log.addHandler(_ToOurLogger())
    paramiko_log.propagate = False


_route_paramiko_logging()

_PREFERRED_KEX = ("curve25519-sha256@libssh.org", "curve25519-sha256")
_DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
_CHUNK = 1 << 18


def parse_gateway(gateway: str) -> tuple[str | None, str, int]:
    """``"[user@]host[:port]"`` -> (user, host, port)."""
    user: str | None = None
    rest = gateway
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
    port = 22
    if rest.startswith("["):  # [ipv6]:port
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = int(tail[1:])
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
        port = int(port_text)
    else:
        host = rest
    return user or None, host, port


def remote_command(python: str) -> str:
    """The shell command that starts the agent's bootstrap with *python*."""
    exe = "~/" + shlex.quote(python[2:]) if python.startswith("~/") else shlex.quote(python)
    return f"exec {exe} -c {shlex.quote(bootstrap_code())}"


class SSHLink(AgentLink):
    """A :class:`~remote._link.HostLink` over SSH."""

    def __init__(
        self,
        spec: HostSpec,
        *,
        connect_timeout: float = 10.0,
        keepalive_interval: float = 5.0,
        timing: LinkTiming | None = None,
        known_hosts_files: tuple[str, ...] | None = None,
        on_stderr: Callable[[AgentLink, str], None] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {}
        if on_stderr is not None:
            kwargs["on_stderr"] = on_stderr
        super().__init__(spec, connect_timeout=connect_timeout, timing=timing, **kwargs)
        self.keepalive_interval = keepalive_interval
        default_files = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")
        self.known_hosts_files = default_files + tuple(known_hosts_files or ())
        self._transports: list[paramiko.Transport] = []
        self._tunnel: GatewayTunnel | None = None
        self._channel: paramiko.Channel | None = None
        self._shutdown_lock = threading.Lock()
        self._shut = False

    # -- connecting ----------------------------------------------------------------------------

    def _where(self, host: str | None = None, port: int | None = None) -> str:
        host = host or self.spec.host
        port = port or self.spec.port
        return f"host {self.spec.name!r} ({host}:{port})"

    def _open(self, deadline: float) -> None:
        spec = self.spec
        try:
            if spec.gateway:
                port = self._open_gateway(deadline)
                sock: Any = self._tcp("127.0.0.1", port, deadline)
            else:
                sock = self._tcp(spec.host, spec.port, deadline)
            transport = self._handshake(sock, spec.host, spec.port, spec.user, deadline)
            channel = transport.open_session(timeout=self._remaining(deadline))
            channel.exec_command(remote_command(spec.python))
        except HostUnavailableError:
            self._shutdown_transport()
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._shutdown_transport()
            raise HostUnavailableError(
                f"{self._where()}: SSH session failed: {type(exc).__name__}: {exc}",
                kind=HostErrorKind.SSH,
                host=self.spec.name,
            ) from None
        self._channel = channel
        self._start_thread(lambda: self._stderr_pump(lambda: channel.recv_stderr(65536)), "stderr")

    def _open_gateway(self, deadline: float) -> int:
        """The local port of a tunnel to the host through its gateway (see ``_gateway``)."""
        spec = self.spec
        assert spec.gateway is not None
        gw_user, gw_host, gw_port = parse_gateway(spec.gateway)
        key_name = gw_host if gw_port == 22 else f"[{gw_host}]:{gw_port}"
        known = self._known_hosts().lookup(key_name)
        if not known and spec.strict_host_key_checking:
            port_opt = "" if gw_port == 22 else f"-p {gw_port} "
            raise HostUnavailableError(
                f"{self._where()}: the gateway {gw_host}:{gw_port} has an unknown host key and "
                f"strict host key checking is on. Fix: connect once with `ssh {port_opt}"
                f"{gw_host}` and accept its key, or set `strict_host_key_checking = false` "
                "for this host in the pool file (test pools only).",
                kind=HostErrorKind.HOST_KEY_UNKNOWN,
                host=spec.name,
            )
        gateway_key = next(iter(known.values())) if known else None
        identity = next((key for label, key in self._keys() if label != "ssh-agent"), None)
        tunnel = GatewayTunnel(
            name=spec.name,
            gateway=(gw_user, gw_host, gw_port),
            target=(spec.host, spec.port),
            user=spec.user or getpass.getuser(),
            identity=identity,
            gateway_key=gateway_key,
        )
        self._tunnel = tunnel
        return tunnel.open(deadline)

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HostUnavailableError(
                f"{self._where()}: connection timed out after {self.connect_timeout:g} s. "
                "Fix: check that the host is up and reachable, or raise connect_timeout.",
                kind=HostErrorKind.TIMEOUT,
                host=self.spec.name,
            )
        return remaining

    def _tcp(self, host: str, port: int, deadline: float) -> socket.socket:
        try:
            sock = socket.create_connection((host, port), timeout=self._remaining(deadline))
        except TimeoutError:
            raise HostUnavailableError(
                f"{self._where(host, port)}: connection timed out after "
                f"{self.connect_timeout:g} s. Fix: check that the host is up and that SSH "
                "listens on that port, or raise connect_timeout.",
                kind=HostErrorKind.TIMEOUT,
                host=self.spec.name,
            ) from None
        except OSError as exc:
            raise HostUnavailableError(
                f"{self._where(host, port)}: cannot connect: {exc.strerror or exc}. Fix: check "
                "the host name/address and port and that sshd runs there.",
                kind=HostErrorKind.UNREACHABLE,
                host=self.spec.name,
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock

    def _known_hosts(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        for path in self.known_hosts_files:
            full = os.path.expanduser(path)
            if os.path.isfile(full):
                with contextlib.suppress(OSError, paramiko.SSHException):
                    keys.load(full)
        return keys

    def _handshake(
        self, sock: Any, host: str, port: int, user: str | None, deadline: float
    ) -> paramiko.Transport:
        transport = paramiko.Transport(sock)
        self._transports.append(transport)
        options = transport.get_security_options()
        offered = list(options.kex)
        options.kex = tuple(
            [k for k in _PREFERRED_KEX if k in offered]
            + [k for k in offered if k not in _PREFERRED_KEX]
        )
        key_name = host if port == 22 else f"[{host}]:{port}"
        known = self._known_hosts().lookup(key_name)
        if known:
            preferred = [k for k in options.key_types if k in known]
            if preferred:
                options.key_types = tuple(preferred)
        try:
            transport.start_client(timeout=self._remaining(deadline))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if isinstance(exc, socket.timeout) or time.monotonic() >= deadline:
                self._remaining(deadline)
            raise HostUnavailableError(
                f"{self._where(host, port)}: SSH handshake failed: {exc}. Fix: check that "
                "an SSH server listens there.",
                kind=HostErrorKind.SSH,
                host=self.spec.name,
            ) from None
        self._check_host_key(transport, key_name, known, host, port)
        transport.set_keepalive(max(1, int(self.keepalive_interval)))
        self._authenticate(transport, host, port, user or getpass.getuser(), deadline)
        return transport

    def _check_host_key(
        self,
        transport: paramiko.Transport,
        key_name: str,
        known: Any,
        host: str,
        port: int,
    ) -> None:
        key = transport.get_remote_server_key()
        if known is not None and key.get_name() in known:
            if known[key.get_name()] == key:
                return
            raise HostUnavailableError(
                f"{self._where(host, port)}: HOST KEY MISMATCH: its {key.get_name()} key "
                f"(fingerprint {key.fingerprint}) differs from the one in known_hosts for "
                f"{key_name}. Someone may be intercepting the connection, or the host was "
                "reinstalled. Fix: verify the new key, then remove the old entry with "
                f"`ssh-keygen -R '{key_name}'`.",
                kind=HostErrorKind.HOST_KEY_MISMATCH,
                host=self.spec.name,
            )
        if not self.spec.strict_host_key_checking:
            return  # accepted for this connection only; no file is written
        port_opt = "" if port == 22 else f"-p {port} "
        raise HostUnavailableError(
            f"{self._where(host, port)}: unknown host key ({key.get_name()} "
            f"{key.fingerprint}) and strict host key checking is on. Fix: connect once with "
            f"`ssh {port_opt}{host}` and accept the key (or add it to ~/.ssh/known_hosts), or set "
            "`strict_host_key_checking = false` for this host in the pool file (test pools only).",
            kind=HostErrorKind.HOST_KEY_UNKNOWN,
            host=self.spec.name,
        )

    def _keys(self) -> list[tuple[str, Any]]:
        keys: list[tuple[str, Any]] = []
        if self.spec.identity_file:
            path = os.path.expanduser(self.spec.identity_file)
            try:
                keys.append((path, paramiko.PKey.from_path(path)))
            except paramiko.PasswordRequiredException:
                raise HostUnavailableError(
                    f"{self._where()}: the identity file {path} is protected by a passphrase. "
                    "Fix: load it into ssh-agent (`ssh-add " + path + "`).",
                    kind=HostErrorKind.AUTH,
                    host=self.spec.name,
                ) from None
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise HostUnavailableError(
                    f"{self._where()}: cannot load the identity file {path}: {exc}. Fix: "
                    "check `identity_file` in the pool file.",
                    kind=HostErrorKind.AUTH,
                    host=self.spec.name,
                ) from None
        if os.environ.get("SSH_AUTH_SOCK"):
            with contextlib.suppress(Exception):
                keys += [("ssh-agent", key) for key in paramiko.Agent().get_keys()]
        for name in _DEFAULT_KEYS:
            path = os.path.expanduser(f"~/.ssh/{name}")
            if os.path.isfile(path):
                with contextlib.suppress(Exception):
                    keys.append((path, paramiko.PKey.from_path(path)))
        return keys

    def _authenticate(
        self, transport: paramiko.Transport, host: str, port: int, user: str, deadline: float
    ) -> None:
        transport.auth_timeout = self._remaining(deadline)
        tried: list[str] = []
        for label, key in self._keys():
            tried.append(label)
            try:
                transport.auth_publickey(user, key)
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise HostUnavailableError(
                    f"{self._where(host, port)}: authentication as {user!r} failed: {exc}",
                    kind=HostErrorKind.AUTH,
                    host=self.spec.name,
                ) from None
            if transport.is_authenticated():
                return
        raise HostUnavailableError(
            f"{self._where(host, port)}: authentication as {user!r} failed "
            f"(tried: {', '.join(tried) or 'no keys found'}). Fix: set `identity_file` for this "
            "host, load the key into ssh-agent, and make sure its public key is in the "
            "remote ~/.ssh/authorized_keys.",
            kind=HostErrorKind.AUTH,
            host=self.spec.name,
        )

    # -- stream ----------------------------------------------------------------------------

    def _read(self, timeout: float | None) -> bytes:
        channel = self._channel
        if channel is None:
            return b""
        channel.settimeout(timeout)
        try:
            return channel.recv(1 << 20)  # type: ignore[no-any-return]
        except TimeoutError:
            raise TimeoutError from None
        finally:
            if timeout is not None:
                channel.settimeout(None)

    def _write(self, data: bytes) -> None:
        channel = self._channel
        if channel is None:
            raise OSError("not connected")
        if len(data) <= _CHUNK:
            channel.sendall(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), _CHUNK):
            # paramiko's annotation says bytes; it slices and writes what it is given,
            # and a view saves a copy of every chunk of a large payload.
            channel.sendall(view[start : start + _CHUNK])  # pyright: ignore[reportArgumentType]
            self._progress()

    def _failure_detail(self) -> str:
        channel = self._channel
        transports = self._transports
        if transports and not transports[-1].is_active():
            return "the SSH connection was lost"
        if channel is not None and channel.exit_status_ready():
            status = channel.recv_exit_status()
            if status == -1:
                return "the agent's SSH channel closed without an exit status"
            return f"the agent exited with status {status}"
        return ""

    def _shutdown_transport(self) -> None:
        with self._shutdown_lock:
            if self._shut:
                return
            self._shut = True
        channel = self._channel
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.shutdown_write()  # EOF on the agent's stdin: it cleans up and exits
            if self._transports and self._transports[-1].is_active():
                channel.status_event.wait(2.0)  # the agent's exit status
            with contextlib.suppress(Exception):
                channel.close()
        for transport in reversed(self._transports):
            with contextlib.suppress(Exception):
                transport.close()
        if self._tunnel is not None:
            self._tunnel.close()
