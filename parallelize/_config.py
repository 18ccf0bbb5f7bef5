"""Sizes of the default executors: explicit configuration, then environment, then defaults.

Environment variables (read when a default executor is first created):

- ``PARALLELIZE_THREAD_WORKERS``: threads of the default THREAD executor
  (default ``min(32, cpu_count + 4)``, as concurrent.futures).
- ``PARALLELIZE_PROCESS_WORKERS``: worker processes of the default PROCESS
  executor (default ``cpu_count``).
- ``PARALLELIZE_SHM_THRESHOLD``: buffers of at least this many bytes go through
  shared memory in the default PROCESS executor (default 1 MiB; ``off``: never).
- ``PARALLELIZE_MAX_TASKS_PER_WORKER``: a worker of the default PROCESS executor is
  replaced after this many calls (default: never).
- ``PARALLELIZE_MAX_WORKER_MEMORY``: ... or after a call that leaves it above this
  resident size (bytes, or ``500MB``, ``2GiB``...; default: no limit).

- ``PARALLELIZE_DASK_ADDRESS`` / ``PARALLELIZE_RAY_ADDRESS``: the cluster of
  ``Method.DASK`` (``tcp://scheduler:8786``) / ``Method.RAY`` (``ray://head:10001``,
  ``auto``); unset: a local cluster started on first use.

The REMOTE pool is configured by its pool file (``PARALLELIZE_POOL_FILE``).

How REMOTE (and the cluster engines) treat failures and stragglers, read when an
executor is created; each may also be set with ``configure(...)`` or in the pool
file's ``[executor]`` table (``configure`` wins, then the environment, then the file):

- ``PARALLELIZE_BACKUPS``: ``1``/``0`` (``true``/``false``): speculative backups.
- ``PARALLELIZE_MAX_ATTEMPTS``: infrastructure failures before a call is poisoned.
- ``PARALLELIZE_STALL_TIMEOUT``: seconds of silence before a host is declared down.
- ``PARALLELIZE_HOST_DOWN_TIMEOUT``: seconds without any usable host before queued
  calls fail.
- ``PARALLELIZE_HEARTBEAT_INTERVAL``: seconds between status lines (INFO, ``remote``).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass

__all__ = [
    "ENV_DASK_ADDRESS",
    "ENV_MAX_TASKS_PER_WORKER",
    "ENV_MAX_WORKER_MEMORY",
    "ENV_PROCESS_WORKERS",
    "ENV_RAY_ADDRESS",
    "ENV_SHM_THRESHOLD",
    "ENV_THREAD_WORKERS",
    "FAILURE_SETTINGS",
    "Settings",
    "current_settings",
    "failure_setting",
    "parse_memory_size",
    "set_settings",
    "validate_failure_setting",
]

ENV_THREAD_WORKERS = "PARALLELIZE_THREAD_WORKERS"
ENV_PROCESS_WORKERS = "PARALLELIZE_PROCESS_WORKERS"
ENV_SHM_THRESHOLD = "PARALLELIZE_SHM_THRESHOLD"
ENV_DASK_ADDRESS = "PARALLELIZE_DASK_ADDRESS"
ENV_RAY_ADDRESS = "PARALLELIZE_RAY_ADDRESS"
ENV_MAX_TASKS_PER_WORKER = "PARALLELIZE_MAX_TASKS_PER_WORKER"
ENV_MAX_WORKER_MEMORY = "PARALLELIZE_MAX_WORKER_MEMORY"


@dataclass(frozen=True)
class Settings:
    """Explicit configuration; None means "environment variable, else default"."""

    thread_workers: int | None = None
    process_workers: int | None = None
    backups: bool | None = None
    max_attempts: int | None = None
    stall_timeout: float | None = None
    host_down_timeout: float | None = None
    heartbeat_interval: float | None = None
    dask_address: str | None = None
    ray_address: str | None = None
    max_tasks_per_worker: int | None = None
    max_worker_memory: int | None = None


# name -> (environment variable, kind): the failure-handling settings shared by the
# executors that run on other machines (REMOTE, and the cluster engines).
FAILURE_SETTINGS: dict[str, tuple[str, str]] = {
    "backups": ("PARALLELIZE_BACKUPS", "bool"),
    "max_attempts": ("PARALLELIZE_MAX_ATTEMPTS", "count"),
    "stall_timeout": ("PARALLELIZE_STALL_TIMEOUT", "seconds"),
    "host_down_timeout": ("PARALLELIZE_HOST_DOWN_TIMEOUT", "seconds"),
    "heartbeat_interval": ("PARALLELIZE_HEARTBEAT_INTERVAL", "seconds"),
}


_settings = Settings()
_settings_lock = threading.Lock()


def current_settings() -> Settings:
    return _settings


def set_settings(settings: Settings) -> None:
    global _settings
    with _settings_lock:
        _settings = settings


def validate_workers(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _from_env(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"environment variable {name}={raw!r} is not a positive integer; "
            f"set it to a worker count such as 4, or unset it"
        )
    return value


def thread_workers() -> int:
    explicit = _settings.thread_workers
    if explicit is not None:
        return explicit
    return _from_env(ENV_THREAD_WORKERS) or min(32, (os.cpu_count() or 1) + 4)


def process_workers() -> int:
    explicit = _settings.process_workers
    if explicit is not None:
        return explicit
    return _from_env(ENV_PROCESS_WORKERS) or (os.cpu_count() or 1)


def validate_failure_setting(name: str, value: object, where: str) -> bool | int | float:
    """Check one failure-handling setting; *where* names its source in the error."""
    kind = FAILURE_SETTINGS[name][1]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name} must be an integer >= 1, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{where}: {name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _parse_env(name: str, raw: str) -> object:
    kind = FAILURE_SETTINGS[name][1]
    text = raw.strip().lower()
    if kind == "bool":
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        return raw
    try:
        return int(text) if kind == "count" else float(text)
    except ValueError:
        return raw


def failure_setting(name: str) -> bool | int | float | None:
    """The value set by ``configure(...)``, else by its environment variable, else None
    (then the pool file's ``[executor]`` table or the executor's default applies)."""
    explicit = getattr(_settings, name)
    if explicit is not None:
        return explicit  # type: ignore[no-any-return]
    env, _ = FAILURE_SETTINGS[name]
    raw = os.environ.get(env)
    if raw is None or raw.strip() == "":
        return None
    try:
        return validate_failure_setting(name, _parse_env(name, raw), f"environment variable {env}")
    except ValueError as exc:
        raise ValueError(f"{exc}; set it to a valid value or unset it") from None


def process_shm_threshold(default: int) -> int | None:
    """The default PROCESS executor's shared-memory threshold in bytes; None: off."""
    raw = os.environ.get(ENV_SHM_THRESHOLD, "").strip()
    if raw == "":
        return default
    if raw.lower() in ("off", "none", "0"):
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 1:
        raise ValueError(
            f"environment variable {ENV_SHM_THRESHOLD}={raw!r} is not a size in bytes; set it "
            "to a number of bytes such as 1048576, to 'off' to send everything through pipes, "
            "or unset it"
        )
    return value


def cluster_address(engine: str) -> str | None:
    """The address of *engine* ("dask"/"ray"): explicit, then environment; None: local."""
    explicit = _settings.dask_address if engine == "dask" else _settings.ray_address
    if explicit:
        return explicit
    raw = os.environ.get(ENV_DASK_ADDRESS if engine == "dask" else ENV_RAY_ADDRESS, "").strip()
    return raw or None


def validate_address(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{what} must be a non-empty string such as 'tcp://scheduler:8786' (Dask) or "
            f"'ray://head:10001' / 'auto' (Ray), got {value!r}"
        )
    return value.strip()


def validate_max_tasks(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{what} must be a positive integer (calls a worker runs before it is replaced), "
            f"or None for no limit; got {value!r}"
        )
    return value


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_memory_size(value: object, what: str) -> int:
    """A size in bytes from an int or a string such as ``"500MB"``, ``"2GiB"``, ``"1.5G"``.

    KB/MB/GB are powers of 1000, KiB/MiB/GiB (and K/M/G) powers of 1024."""
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
        number = None if match is None or unit is None else int(float(match.group(1)) * unit)
    else:
        number = None
    if number is None or number < 1:
        raise ValueError(
            f"{what} must be a positive number of bytes or a size such as '500MB' or '2GiB' "
            f"(units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), got {value!r}"
        )
    return number


def max_tasks_per_worker() -> int | None:
    """The default PROCESS executor's limit: explicit, then environment; None: no limit."""
    explicit = _settings.max_tasks_per_worker
    if explicit is not None:
        return explicit
    raw = os.environ.get(ENV_MAX_TASKS_PER_WORKER, "").strip()
    if not raw:
        return None
    try:
        return validate_max_tasks(int(raw), f"environment variable {ENV_MAX_TASKS_PER_WORKER}")
    except ValueError:
        raise ValueError(
            f"environment variable {ENV_MAX_TASKS_PER_WORKER}={raw!r} is not a positive "
            "integer; set it to the calls a worker runs before it is replaced, such as 100, "
            "or unset it"
        ) from None


def max_worker_memory() -> int | None:
    """The default PROCESS executor's limit in bytes: explicit, then environment."""
    explicit = _settings.max_worker_memory
    if explicit is not None:
        return explicit
    raw = os.environ.get(ENV_MAX_WORKER_MEMORY, "").strip()
    if not raw:
        return None
    try:
        return parse_memory_size(raw, f"environment variable {ENV_MAX_WORKER_MEMORY}")
    except ValueError as exc:
        raise ValueError(f"{exc}; set it to a valid size or unset it") from None
