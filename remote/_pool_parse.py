"""Parsing the pool file's tables into a :class:`PoolConfig`: which keys each table takes,
how ``[executor]``, ``[defaults]`` and each ``[hosts.NAME]`` combine, and the controller's
halved slots. Single values are checked by ``remote/_pool_values.py``; aliases are resolved
through ``remote/_pool_ssh.py``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from parallelize.ext import FAILURE_SETTINGS, validate_failure_setting

from ._blobs import check_cache_bytes, check_compression, check_threshold
from ._controller_host import is_controller_host
from ._link import HostSpec
from ._pool_ssh import load_ssh_config, ssh_values
from ._pool_values import Checker

__all__ = ["PoolConfig", "parse_pool"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:+-]{0,63}$")

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


def parse_pool(data: Mapping[str, Any], path: str, *, ssh_config: Path | None = None) -> PoolConfig:
    """Validate parsed TOML *data* read from *path* (used in error messages)."""
    check = Checker(path)
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
    ssh = load_ssh_config(ssh_config, path) if ssh_config is not None else None
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


def _blob_field(check: Checker, validate: Any, value: Any, entry: str, name: str) -> Any:
    try:
        return validate(value, f"{entry}.{name}")
    except ValueError as exc:
        problem, _, fix = str(exc).split(": ", 1)[1].partition(". Fix: ")
        raise check.fail(entry, name, problem, fix or "correct the value") from None


def _executor_options(check: Checker, table: object) -> dict[str, bool | int | float]:
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


def _common_fields(check: Checker, table: Mapping[str, Any], entry: str) -> dict[str, Any]:
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


def _recycle_fields(check: Checker, table: Mapping[str, Any], entry: str) -> dict[str, Any]:
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


def _host_spec(
    check: Checker,
    name: str,
    table: Mapping[str, Any],
    defaults: Mapping[str, Any],
    strict: bool,
    ssh: Any,
) -> HostSpec:
    entry = f"hosts.{name}"
    alias = check.host(table.get("host", name), entry, "host")
    explicit = _common_fields(check, table, entry)
    host, from_ssh = ssh_values(check, alias, entry, ssh)
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
