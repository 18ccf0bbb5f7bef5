"""Sizes of the default executors: explicit configuration, then environment, then defaults.

Environment variables (read when a default executor is first created):

- ``PARALLELIZE_THREAD_WORKERS``: threads of the default THREAD executor
  (default ``min(32, cpu_count + 4)``, as concurrent.futures).
- ``PARALLELIZE_PROCESS_WORKERS``: worker processes of the default PROCESS
  executor (default ``cpu_count``).
- ``PARALLELIZE_SHM_THRESHOLD``: buffers of at least this many bytes go through
  shared memory in the default PROCESS executor (default 1 MiB; ``off``: never).

The REMOTE pool is configured by its pool file (``PARALLELIZE_POOL_FILE``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

__all__ = [
    "ENV_PROCESS_WORKERS",
    "ENV_SHM_THRESHOLD",
    "ENV_THREAD_WORKERS",
    "Settings",
    "current_settings",
    "set_settings",
]

ENV_THREAD_WORKERS = "PARALLELIZE_THREAD_WORKERS"
ENV_PROCESS_WORKERS = "PARALLELIZE_PROCESS_WORKERS"
ENV_SHM_THRESHOLD = "PARALLELIZE_SHM_THRESHOLD"


@dataclass(frozen=True)
class Settings:
    """Explicit configuration; None means "environment variable, else default"."""

    thread_workers: int | None = None
    process_workers: int | None = None


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
