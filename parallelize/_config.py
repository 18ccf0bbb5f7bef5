"""Sizes of the default executors: explicit configuration, then environment, then defaults.

Environment variables (read when a default executor is first created):

- ``PARALLELIZE_THREAD_WORKERS``: threads of the default THREAD executor
  (default ``min(32, cpu_count + 4)``, as concurrent.futures).
- ``PARALLELIZE_PROCESS_WORKERS``: worker processes of the default PROCESS
  executor (default ``cpu_count``).

- ``PARALLELIZE_DASK_ADDRESS`` / ``PARALLELIZE_RAY_ADDRESS``: the cluster of
  ``Method.DASK`` (``tcp://scheduler:8786``) / ``Method.RAY`` (``ray://head:10001``,
  ``auto``); unset: a local cluster started on first use.

The REMOTE pool is configured by its pool file (``PARALLELIZE_POOL_FILE``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

__all__ = [
    "ENV_DASK_ADDRESS",
    "ENV_PROCESS_WORKERS",
    "ENV_RAY_ADDRESS",
    "ENV_THREAD_WORKERS",
    "Settings",
    "current_settings",
    "set_settings",
]

ENV_THREAD_WORKERS = "PARALLELIZE_THREAD_WORKERS"
ENV_PROCESS_WORKERS = "PARALLELIZE_PROCESS_WORKERS"
ENV_DASK_ADDRESS = "PARALLELIZE_DASK_ADDRESS"
ENV_RAY_ADDRESS = "PARALLELIZE_RAY_ADDRESS"


@dataclass(frozen=True)
class Settings:
    """Explicit configuration; None means "environment variable, else default"."""

    thread_workers: int | None = None
    process_workers: int | None = None
    dask_address: str | None = None
    ray_address: str | None = None
    backups: bool | None = None  # speculative backups on DASK (None: on)


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
