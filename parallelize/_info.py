"""``python -m parallelize info``: the configuration in force and where each value came from."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Callable

from . import _config
from ._registry import info_sections

__all__ = ["ENV_POOL_FILE", "format_info", "main"]

ENV_POOL_FILE = "PARALLELIZE_POOL_FILE"
_ENV_VARS = (
    _config.ENV_THREAD_WORKERS,
    _config.ENV_PROCESS_WORKERS,
    ENV_POOL_FILE,
    *(env for env, _ in _config.FAILURE_SETTINGS.values()),
)
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
    for title, section in info_sections():
        lines += ["", f"{title}:"]
        try:
            lines.extend(section())
        except Exception as exc:  # a plugin's bug must not hide the rest
            lines.append(f"  ERROR {type(exc).__name__}: {exc}")
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
