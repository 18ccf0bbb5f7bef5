"""The pool file: which hosts REMOTE runs on (see ``examples/pool.example.toml``).

Where it is read from, first match wins:

1. the path given to :func:`load_pool` (it must exist);
2. the ``PARALLELIZE_POOL_FILE`` environment variable (it must exist);
3. ``$XDG_CONFIG_HOME/parallelize/pool.toml`` (``~/.config/...`` without XDG_CONFIG_HOME);
   when that file is absent :func:`load_pool` returns None and callers use
   :func:`embedded_pool`.

Each ``[hosts.NAME]`` table becomes a :class:`~remote._link.HostSpec`. A value is taken from
the host's table, else from ``~/.ssh/config`` (when ``host`` is an alias there: HostName,
User, Port, IdentityFile, ProxyJump), else from ``[defaults]``, else the built-in default.

The controller in the pool: a host whose ``host`` equals this machine's hostname or FQDN or
``localhost``, or is a literal address of one of this machine's *non-loopback* interfaces,
is the controller itself; it gets half its slots (at least one) so the controller keeps
CPU for itself. Other loopback addresses (127.0.0.2, ...) are treated as remote hosts
(the test suite runs one sshd per such address). ``controller = true/false`` overrides the
detection for a host.

Recycling of slot processes: ``max_tasks_per_worker`` (an integer >= 1) and
``max_worker_memory`` (bytes, or a size such as ``"2GiB"`` or ``"500MB"``) in a host's
table, in ``[defaults]``, or in ``[executor]`` (a default for every host; a host's own
table, then ``[defaults]``, win).
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import math
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from parallelize.ext import FAILURE_SETTINGS, validate_failure_setting

from ._blobs import check_cache_bytes, check_compression, check_threshold
from ._errors import PoolConfigError
from ._link import HostSpec

__all__ = [
    "PoolConfig",
    "PoolConfigError",
    "default_pool_path",
    "embedded_pool",
    "is_controller_host",
    "load_pool",
    "parse_size",
    "with_recycling",
]

ENV_VAR = "PARALLELIZE_POOL_FILE"

_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$")
_PYTHON_RE = re.compile(r"^(?:~/)?[A-Za-z0-9_./+-]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:+-]{0,63}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_RECYCLE_KEYS = ("max_tasks_per_worker", "max_worker_memory")

_DEFAULT_KEYS = (
    "user",
    "python",
    "slots",
    "weight",
    "port",
    "identity_file",
    "gateway",
    "strict_host_key_checking",
    "connect_timeout",
    "blob_cache_bytes",
    "compression",
    *_RECYCLE_KEYS,
)
_HOST_KEYS = (
    "host",
    "user",
    "port",
    "slots",
    "weight",
    "python",
    "identity_file",
    "gateway",
    "strict_host_key_checking",
    "controller",
    "blob_cache_bytes",
    "compression",
    *_RECYCLE_KEYS,
)
_BLOB_EXECUTOR_KEYS = ("blob_threshold", "compression")  # [executor] keys of remote/_blobs.py


@dataclass(frozen=True)
class PoolConfig:
    """A validated pool: its hosts and the options that apply to every connection."""

    hosts: tuple[HostSpec, ...]
    connect_timeout: float = 10.0
    strict_host_key_checking: bool = True
    path: str | None = None  # the file it was read from; None for the embedded pool
    # the [executor] table: failure-handling settings (see parallelize._config)
    executor: Mapping[str, bool | int | float] = field(default_factory=dict)
    blob_threshold: int | None = None  # [executor] blob_threshold (remote/_blobs.py)


def parse_size(value: object) -> int:
    """Bytes from an integer or a size string ("2GiB", "500MB", "1.5 GB", "4096");
    ValueError (naming the accepted forms) otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"a memory size must be at least 1 byte, got {value}")
        return value
    if isinstance(value, str) and (match := _SIZE_RE.match(value)):
        number, unit = match.groups()
        factor = _SIZE_UNITS.get(unit.lower())
        if factor is not None:
            size = int(float(number) * factor)
            if size >= 1:
                return size
    raise ValueError(
        f"{value!r} is not a memory size: give a number of bytes or a string such as "
        '"2GiB", "500MB" or "512MiB" (units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)'
    )


def with_recycling(
    config: PoolConfig, max_tasks_per_worker: object = None, max_worker_memory: object = None
) -> PoolConfig:
    """*config* with these recycling limits on every host that does not set its own
    (``RemoteExecutor(max_tasks_per_worker=..., max_worker_memory=...)``)."""
    if max_tasks_per_worker is None and max_worker_memory is None:
        return config
    tasks: int | None = None
    memory: int | None = None
    if max_tasks_per_worker is not None:
        if (
            isinstance(max_tasks_per_worker, bool)
            or not isinstance(max_tasks_per_worker, int)
            or max_tasks_per_worker < 1
        ):
            raise ValueError(
                f"max_tasks_per_worker must be an integer >= 1 (or None for no limit), got "
                f"{max_tasks_per_worker!r}"
            )
        tasks = max_tasks_per_worker
    if max_worker_memory is not None:
        try:
            memory = parse_size(max_worker_memory)
        except ValueError as exc:
            raise ValueError(f"max_worker_memory: {exc}") from None
    hosts = tuple(
        replace(
            spec,
            max_tasks_per_worker=(
                spec.max_tasks_per_worker if spec.max_tasks_per_worker is not None else tasks
            ),
            max_worker_memory=(
                spec.max_worker_memory if spec.max_worker_memory is not None else memory
            ),
        )
        for spec in config.hosts
    )
    return replace(config, hosts=hosts)


def default_pool_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "parallelize" / "pool.toml"


def embedded_pool(slots: int | None = None) -> PoolConfig:
    """The default pool without a pool file: one local host (its slots are PROCESS workers
    when it runs this interpreter, see remote/_process_link.py)."""
    count = slots if slots is not None else (os.cpu_count() or 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"embedded_pool: slots must be an integer >= 1, got {slots!r}")
    spec = HostSpec(
        name="local", host="localhost", slots=count, python=sys.executable, is_local=True
    )
    return PoolConfig(hosts=(spec,))


def load_pool(
    path: str | os.PathLike[str] | None = None, *, ssh_config: str | os.PathLike[str] | None = None
) -> PoolConfig | None:
    """Read and validate the pool file (see the module doc for where it is looked for).

    Returns None when no file is named and none exists at the default location.
    *ssh_config*: the OpenSSH client config used to resolve aliases
    (default ``~/.ssh/config`` when present)."""
    if path is not None:
        chosen, origin = Path(os.fspath(path)).expanduser(), "the path given"
    elif os.environ.get(ENV_VAR):
        chosen, origin = Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    else:
        chosen = default_pool_path()
        if not chosen.is_file():
            return None
        origin = "the default location"
    if not chosen.is_file():
        raise PoolConfigError(
            f"pool file {chosen} (from {origin}) does not exist. Fix: create it (see "
            f"examples/pool.example.toml) or correct the path"
            + (f", or unset {ENV_VAR}" if origin.startswith("$") else "")
            + ".",
            path=str(chosen),
        )
    tomllib = _toml_module(chosen)
    try:
        with open(chosen, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise PoolConfigError(
            f"{chosen}: not valid TOML: {exc}. Fix the syntax.", path=str(chosen)
        ) from None
    except OSError as exc:
        raise PoolConfigError(f"cannot read pool file {chosen}: {exc}", path=str(chosen)) from None
    ssh_path = (
        Path(os.fspath(ssh_config)).expanduser()
        if ssh_config is not None
        else Path("~/.ssh/config").expanduser()
    )
    return parse_pool(data, str(chosen), ssh_config=ssh_path if ssh_path.is_file() else None)


def _toml_module(path: Path) -> Any:
    import importlib

    for name in ("tomllib", "tomli"):  # tomllib from Python 3.11; tomli before
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise PoolConfigError(
        f"cannot read pool file {path}: reading TOML needs Python 3.11+ or the 'tomli' "
        "package. Fix: pip install tomli."
    )


class _Checker:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, entry: str, field: str | None, problem: str, fix: str) -> PoolConfigError:
        where = f"{self.path}: [{entry}]" + (f" field {field!r}" if field else "")
        return PoolConfigError(
            f"{where}: {problem}. Fix: {fix}.", path=self.path, entry=entry, field=field
        )

    def keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], entry: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
                raise self.fail(entry, key, "unknown key", f"remove it or rename it ({hint})")

    def integer(self, value: Any, entry: str, field: str, low: int, high: int | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(
                entry, field, f"must be an integer, got {value!r}", f"write e.g. {field} = {low}"
            )
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise self.fail(entry, field, f"must be {bound}, got {value}", f"use a value {bound}")
        return value

    def positive(self, value: Any, entry: str, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(
                entry, field, f"must be a number, got {value!r}", f"write e.g. {field} = 1.0"
            )
        if not (value > 0 and math.isfinite(value)):
            raise self.fail(
                entry, field, f"must be a finite number > 0, got {value}", "use a positive value"
            )
        return float(value)

    def size(self, value: Any, entry: str, field: str) -> int:
        try:
            return parse_size(value)
        except ValueError:
            raise self.fail(
                entry,
                field,
                f"{value!r} is not a memory size",
                f'write a number of bytes or a size string, e.g. {field} = "2GiB" or "500MB" '
                "(units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)",
            ) from None

    def boolean(self, value: Any, entry: str, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(
                entry, field, f"must be true or false, got {value!r}", f"write {field} = true"
            )
        return value

    def string(self, value: Any, entry: str, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(
                entry, field, f"must be a non-empty string, got {value!r}", 'quote it: "..."'
            )
        return value

    def host(self, value: Any, entry: str, field: str) -> str:
        text = self.string(value, entry, field)
        if not _is_host(text):
            raise self.fail(
                entry,
                field,
                f"{text!r} is not a valid host name or address",
                "use a DNS name, an IP address or an alias from ~/.ssh/config (letters, digits, "
                "'.', '-', '_' only)",
            )
        return text

    def user(self, value: Any, entry: str, field: str) -> str:
        text = self.string(value, entry, field)
        if not _USER_RE.match(text):
            raise self.fail(
                entry,
                field,
                f"{text!r} is not a valid user name",
                "use letters, digits, '.', '-', '_' (starting with a letter or '_')",
            )
        return text

    def python(self, value: Any, entry: str, field: str) -> str:
        text = self.string(value, entry, field)
        if not _PYTHON_RE.match(text) or text.startswith("-"):
            raise self.fail(
                entry,
                field,
                f"{text!r} is not a plain command name or path (no spaces or shell characters "
                "allowed)",
                'use e.g. "python3" or "/opt/py/bin/python3"',
            )
        return text

    def gateway(self, value: Any, entry: str, field: str) -> str:
        text = self.string(value, entry, field)
        user, host, port_text = _split_gateway(text)
        ok = (
            (user is None or bool(_USER_RE.match(user)))
            and _is_host(host)
            and (port_text is None or (port_text.isdigit() and 1 <= int(port_text) <= 65535))
        )
        if not ok:
            raise self.fail(
                entry,
                field,
                f"{text!r} is not of the form [user@]host[:port]",
                'write e.g. gateway = "bob@bastion.example.com:22"',
            )
        return text

    def identity(self, value: Any, entry: str, field: str) -> str:
        text = self.string(value, entry, field)
        if "\0" in text:
            raise self.fail(entry, field, "contains a NUL character", "give a file path")
        if not os.path.isfile(os.path.expanduser(text)):
            raise self.fail(
                entry,
                field,
                f"the key file {text} does not exist",
                "give the path of an existing private key (e.g. ~/.ssh/id_ed25519)",
            )
        return text


def _split_gateway(text: str) -> tuple[str | None, str, str | None]:
    user: str | None = None
    rest = text
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
    port: str | None = None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail:
            port = tail[1:] if tail.startswith(":") else "x"
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host = rest
    return user, host, port


def _is_host(text: str) -> bool:
    if _HOST_RE.match(text):
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _local_addresses() -> set[str]:
    """This machine's non-loopback interface addresses (Linux /proc; name lookup elsewhere)."""
    found: set[str] = set()
    try:
        with open("/proc/net/fib_trie") as handle:
            last = ""
            for line in handle:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("|--", "+--"):
                    last = parts[1]
                elif "/32 host LOCAL" in line and last:
                    found.add(last)
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as handle:
            for line in handle:
                raw = line.split()[0]
                found.add(str(ipaddress.IPv6Address(int(raw, 16))))
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            for info in socket.getaddrinfo(socket.gethostname(), None):
                found.add(str(info[4][0]))
        except OSError:
            pass
    result = set()
    for text in found:
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if not address.is_loopback:
            result.add(str(address))
    return result


def is_controller_host(host: str) -> bool:
    """True when *host* names this machine (see the module doc for the exact rule)."""
    name = host.lower().rstrip(".")
    names = {"localhost", socket.gethostname().lower()}
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn().lower())
    if name in names:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not address.is_loopback and str(address) in _local_addresses()


def parse_pool(data: Mapping[str, Any], path: str, *, ssh_config: Path | None = None) -> PoolConfig:
    """Validate parsed TOML *data* read from *path* (used in error messages)."""
    check = _Checker(path)
    check.keys(data, ("defaults", "hosts", "executor"), "top level")
    executor_raw = data.get("executor", {})
    if not isinstance(executor_raw, dict):
        raise check.fail("executor", None, "must be a table", "write it as [executor]")
    check.keys(executor_raw, (*FAILURE_SETTINGS, *_RECYCLE_KEYS, *_BLOB_EXECUTOR_KEYS), "executor")
    recycle = _recycle_fields(check, executor_raw, "executor")
    blob_options = {k: executor_raw[k] for k in _BLOB_EXECUTOR_KEYS if k in executor_raw}
    executor = _executor_options(
        check,
        {
            k: v
            for k, v in executor_raw.items()
            if k not in _RECYCLE_KEYS and k not in _BLOB_EXECUTOR_KEYS
        },
    )
    blob_threshold = None
    if "blob_threshold" in blob_options:
        blob_threshold = _blob_field(
            check, check_threshold, blob_options["blob_threshold"], "executor", "blob_threshold"
        )
    defaults_raw = data.get("defaults", {})
    if not isinstance(defaults_raw, dict):
        raise check.fail("defaults", None, "must be a table", "write it as [defaults]")
    check.keys(defaults_raw, _DEFAULT_KEYS, "defaults")
    defaults = {**recycle, **_common_fields(check, defaults_raw, "defaults")}
    if "compression" in blob_options and "compression" not in defaults:
        # [executor] compression: the default of every host
        defaults["compression"] = _blob_field(
            check, check_compression, blob_options["compression"], "executor", "compression"
        )
    connect_timeout = 10.0
    if "connect_timeout" in defaults_raw:
        connect_timeout = check.positive(
            defaults_raw["connect_timeout"], "defaults", "connect_timeout"
        )
    strict = defaults.pop("strict_host_key_checking", True)
    hosts_raw = data.get("hosts")
    if not isinstance(hosts_raw, dict) or not hosts_raw:
        raise check.fail(
            "hosts",
            None,
            "the pool file defines no hosts",
            'add at least one [hosts.NAME] table with host = "..."',
        )
    ssh = _load_ssh_config(ssh_config, path) if ssh_config is not None else None
    specs: list[HostSpec] = []
    for name, table in hosts_raw.items():
        entry = f"hosts.{name}"
        if not isinstance(table, dict):
            raise check.fail(entry, None, "must be a table", f"write it as [hosts.{name}]")
        if not _NAME_RE.match(name):
            raise check.fail(
                entry,
                None,
                f"{name!r} is not a valid host entry name",
                "use letters, digits and '._-' (up to 64 characters)",
            )
        check.keys(table, _HOST_KEYS, entry)
        specs.append(_host_spec(check, name, table, defaults, strict, ssh))
    return PoolConfig(
        hosts=tuple(specs),
        connect_timeout=connect_timeout,
        strict_host_key_checking=strict,
        path=path,
        executor=executor,
        blob_threshold=blob_threshold,
    )


def _blob_field(check: _Checker, validate: Any, value: Any, entry: str, name: str) -> Any:
    try:
        return validate(value, f"{entry}.{name}")
    except ValueError as exc:
        problem, _, fix = str(exc).split(": ", 1)[1].partition(". Fix: ")
        raise check.fail(entry, name, problem, fix or "correct the value") from None


def _executor_options(check: _Checker, table: object) -> dict[str, bool | int | float]:
    """The ``[executor]`` table: how REMOTE treats failures and stragglers."""
    if not isinstance(table, dict):
        raise check.fail("executor", None, "must be a table", "write it as [executor]")
    check.keys(table, tuple(FAILURE_SETTINGS), "executor")
    out: dict[str, bool | int | float] = {}
    for name, value in table.items():
        try:
            out[name] = validate_failure_setting(name, value, "x")
        except ValueError as exc:
            raise check.fail(
                "executor", name, str(exc).split(": ", 1)[1], "correct the value"
            ) from None
    return out


def _common_fields(check: _Checker, table: Mapping[str, Any], entry: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "user" in table:
        out["user"] = check.user(table["user"], entry, "user")
    if "python" in table:
        out["python"] = check.python(table["python"], entry, "python")
    if "slots" in table:
        out["slots"] = check.integer(table["slots"], entry, "slots", 1, 4096)
    if "weight" in table:
        out["weight"] = check.positive(table["weight"], entry, "weight")
    if "port" in table:
        out["port"] = check.integer(table["port"], entry, "port", 1, 65535)
    if "identity_file" in table:
        out["identity_file"] = check.identity(table["identity_file"], entry, "identity_file")
    if "gateway" in table:
        out["gateway"] = check.gateway(table["gateway"], entry, "gateway")
    if "blob_cache_bytes" in table:
        out["blob_cache_bytes"] = _blob_field(
            check, check_cache_bytes, table["blob_cache_bytes"], entry, "blob_cache_bytes"
        )
    if "compression" in table:
        out["compression"] = _blob_field(
            check, check_compression, table["compression"], entry, "compression"
        )
    if "strict_host_key_checking" in table:
        out["strict_host_key_checking"] = check.boolean(
            table["strict_host_key_checking"], entry, "strict_host_key_checking"
        )
    out.update(_recycle_fields(check, table, entry))
    return out


def _recycle_fields(check: _Checker, table: Mapping[str, Any], entry: str) -> dict[str, Any]:
    """``max_tasks_per_worker`` and ``max_worker_memory``: when a slot process is replaced."""
    out: dict[str, Any] = {}
    if "max_tasks_per_worker" in table:
        out["max_tasks_per_worker"] = check.integer(
            table["max_tasks_per_worker"], entry, "max_tasks_per_worker", 1, None
        )
    if "max_worker_memory" in table:
        out["max_worker_memory"] = check.size(
            table["max_worker_memory"], entry, "max_worker_memory"
        )
    return out


def _load_ssh_config(path: Path, pool_path: str) -> Any:
    import paramiko

    try:
        return paramiko.SSHConfig.from_path(str(path))
    except Exception as exc:
        raise PoolConfigError(
            f"{pool_path}: cannot read the SSH client config {path} to resolve host aliases: "
            f"{exc}. Fix: correct that file."
        ) from None


def _host_spec(
    check: _Checker,
    name: str,
    table: Mapping[str, Any],
    defaults: Mapping[str, Any],
    strict: bool,
    ssh: Any,
) -> HostSpec:
    entry = f"hosts.{name}"
    alias = check.host(table.get("host", name), entry, "host")
    explicit = _common_fields(check, table, entry)
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
    merged: dict[str, Any] = {**defaults, **from_ssh, **explicit}
    merged.setdefault("strict_host_key_checking", strict)
    spec = HostSpec(name=name, host=host, **merged)
    controller = table.get("controller")
    if controller is None:
        controller = is_controller_host(host)
    else:
        controller = check.boolean(controller, entry, "controller")
    if controller:
        spec = replace(spec, slots=max(1, spec.slots // 2))
    return spec
