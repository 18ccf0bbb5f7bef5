"""``python -m parallelize info``: the configuration in force and where each value came from."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

from . import _config

__all__ = ["ENV_POOL_FILE", "format_info", "main"]

ENV_POOL_FILE = "PARALLELIZE_POOL_FILE"
_ENV_VARS = (
    _config.ENV_THREAD_WORKERS,
    _config.ENV_PROCESS_WORKERS,
    ENV_POOL_FILE,
    *(env for env, _ in _config.FAILURE_SETTINGS.values()),
)
# What REMOTE uses when nothing sets a failure-handling setting (see remote/_executor.py).
_FAILURE_DEFAULTS = {
    "backups": "True",
    "max_attempts": "3",
    "stall_timeout": "10 s",
    "host_down_timeout": "60 s",
    "heartbeat_interval": "5 s",
}
_VERSIONS = ("parallelize", "cloudpickle", "numpy", "wrapt", "tqdm", "matplotlib")
_OPTIONAL = frozenset({"matplotlib"})


def _size_line(
    label: str, explicit: int | None, env_name: str, default: Callable[[], int], default_text: str
) -> str:
    if explicit is not None:
        return f"  {label:<16} {explicit:<4} from configure({label}={explicit})"
    raw = os.environ.get(env_name)
    if raw is not None and raw.strip():
        try:
            value = _config._from_env(env_name)
        except ValueError as exc:
            return f"  {label:<16} ERROR {exc}"
        return f"  {label:<16} {value:<4} from environment variable {env_name}={raw}"
    return f"  {label:<16} {default():<4} default ({default_text})"


def _pool_lines() -> list[str]:
    finder: Callable[[], Path] | None = None
    env_name = ENV_POOL_FILE
    try:
        pool_config = importlib.import_module("remote._pool_config")
        finder = pool_config.default_pool_path
        env_name = getattr(pool_config, "ENV_VAR", ENV_POOL_FILE)
    except Exception:  # REMOTE not installed or broken: compute the same path here
        finder = None
    from_env = os.environ.get(env_name)
    if from_env:
        path = Path(from_env).expanduser()
        where = f"from {env_name}"
        absent = "(MISSING: REMOTE will fail until the file exists or the variable is unset)"
    else:
        path = finder() if finder is not None else _default_pool_path()
        where = "default location"
        absent = "(not present: REMOTE uses the embedded local pool)"
    if path.is_file():
        state = "(present)"
    elif path.exists():
        state = "(not a file: REMOTE will fail)"
    else:
        state = absent
    return [f"  pool file        {path}  [{where}] {state}"]


def _pool_executor_table() -> dict[str, object]:
    """The [executor] table of the pool file in force ({} if none or unreadable)."""
    try:
        pool_config = importlib.import_module("remote._pool_config")
        config = pool_config.load_pool()
    except Exception:
        return {}
    return dict(config.executor) if config is not None else {}


def _failure_lines() -> list[str]:
    settings = _config.current_settings()
    table = _pool_executor_table()
    lines = []
    for name, (env, _) in _config.FAILURE_SETTINGS.items():
        explicit = getattr(settings, name)
        raw = os.environ.get(env)
        if explicit is not None:
            lines.append(f"  {name:<18} {explicit!s:<6} from configure({name}=...)")
        elif raw is not None and raw.strip():
            try:
                value = _config.failure_setting(name)
            except ValueError as exc:
                lines.append(f"  {name:<18} ERROR {exc}")
                continue
            lines.append(f"  {name:<18} {value!s:<6} from environment variable {env}={raw}")
        elif name in table:
            lines.append(f"  {name:<18} {table[name]!s:<6} from the pool file's [executor] table")
        else:
            lines.append(f"  {name:<18} {_FAILURE_DEFAULTS[name]:<6} default")
    return lines


def _default_pool_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "parallelize" / "pool.toml"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        if version:
            return str(version)
        return "not installed (optional)" if name in _OPTIONAL else "not installed"


def _live_lines() -> list[str]:
    from . import _defaults
    from ._executor_base import live_executors

    defaults = {id(e) for e in _defaults._executors.values()}
    lines = []
    for executor in live_executors():
        kind = "default" if id(executor) in defaults else "user"
        lines.append(f"  {executor!r} ({kind}, {executor.live_tasks} live tasks)")
    return lines or ["  none (default executors are created on first use)"]


def format_info() -> str:
    """The text that ``python -m parallelize info`` prints."""
    settings = _config.current_settings()
    lines = ["parallelize configuration", "", "default executors:"]
    lines.append(
        _size_line(
            "thread_workers",
            settings.thread_workers,
            _config.ENV_THREAD_WORKERS,
            lambda: min(32, (os.cpu_count() or 1) + 4),
            "min(32, cpu_count + 4)",
        )
    )
    lines.append(
        _size_line(
            "process_workers",
            settings.process_workers,
            _config.ENV_PROCESS_WORKERS,
            lambda: os.cpu_count() or 1,
            "cpu_count",
        )
    )
    lines.extend(_pool_lines())
    lines += ["", "REMOTE failure handling (RemoteExecutor arguments override these):"]
    lines.extend(_failure_lines())
    lines += ["", "environment variables:"]
    for name in _ENV_VARS:
        value = os.environ.get(name)
        lines.append(f"  {name}={value}" if value is not None else f"  {name} unset")
    lines += ["", "versions:"]
    impl = platform.python_implementation()
    lines.append(f"  {'Python':<12} {platform.python_version()} ({impl}, {sys.executable})")
    lines.extend(f"  {name:<12} {_version(name)}" for name in _VERSIONS)
    lines += ["", "live executors in this process:"]
    lines.extend(_live_lines())
    lines.append(f"\ncpu_count: {os.cpu_count()}")
    return "\n".join(lines)


def main() -> int:
    print(format_info())
    return 0
