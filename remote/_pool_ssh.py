"""``~/.ssh/config`` for the pool file: a host whose ``host`` is an alias there takes
HostName, User, Port, IdentityFile and ProxyJump from it (below the host's own table, above
``[defaults]``; see ``remote/_pool_config.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._errors import PoolConfigError
from ._pool_values import Checker

__all__ = ["load_ssh_config", "ssh_values"]


def load_ssh_config(path: Path, pool_path: str) -> Any:
    """The SSH client config at *path*, parsed (paramiko.SSHConfig)."""
    import paramiko

    try:
        return paramiko.SSHConfig.from_path(str(path))
    except Exception as exc:
        raise PoolConfigError(
            f"{pool_path}: cannot read the SSH client config {path} to resolve host aliases: "
            f"{exc}. Fix: correct that file."
        ) from None


def ssh_values(check: Checker, alias: str, entry: str, ssh: Any) -> tuple[str, dict[str, Any]]:
    """The address to connect to for *alias* and the values its ``Host`` block in the
    parsed SSH config *ssh* gives (*alias* and nothing when *ssh* is None or lacks it)."""
    from_ssh: dict[str, Any] = {}
    host = alias
    if ssh is not None and alias in ssh.get_hostnames():
        resolved = ssh.lookup(alias)
        where = f"{entry} (via ~/.ssh/config Host {alias})"
        if "hostname" in resolved:
            host = check.host(resolved["hostname"], where, "HostName")
        if "user" in resolved:
            from_ssh["user"] = check.user(resolved["user"], where, "User")
        if "port" in resolved:
            port = str(resolved["port"])
            if not port.isdigit():
                raise check.fail(where, "Port", f"{port!r} is not a port number", "fix it")
            from_ssh["port"] = check.integer(int(port), where, "Port", 1, 65535)
        files = resolved.get("identityfile") or []
        existing = [f for f in files if os.path.isfile(os.path.expanduser(f))]
        if existing:
            from_ssh["identity_file"] = existing[0]
        jump = resolved.get("proxyjump")
        if jump and jump.lower() != "none":
            if "," in jump:
                raise check.fail(
                    where,
                    "ProxyJump",
                    f"{jump!r} has several hops; only one gateway is supported",
                    "use a single jump host",
                )
            from_ssh["gateway"] = check.gateway(jump, where, "ProxyJump")
    return host, from_ssh
