"""REMOTE's section of ``python -m parallelize info``: the pool file in force and the
failure-handling settings with where each value comes from."""

from __future__ import annotations

import os

from parallelize.ext import FAILURE_SETTINGS, current_settings, failure_setting

from ._pool_config import ENV_VAR, default_pool_path, load_pool

__all__ = ["info_lines"]

# What REMOTE uses when nothing sets a failure-handling setting (see _executor.py).
_DEFAULTS = {
    "backups": "True",
    "max_attempts": "3",
    "stall_timeout": "10 s",
    "host_down_timeout": "60 s",
    "heartbeat_interval": "5 s",
}


def _pool_line() -> tuple[str, dict[str, object]]:
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        path = os.path.expanduser(from_env)
        where = f"from {ENV_VAR}"
        absent = "(MISSING: REMOTE will fail until the file exists or the variable is unset)"
    else:
        path = str(default_pool_path())
        where = "default location"
        absent = "(not present: REMOTE uses the embedded local pool)"
    table: dict[str, object] = {}
    if os.path.isfile(path):
        state = "(present)"
        try:
            config = load_pool()
            if config is not None:
                table = dict(config.executor)
        except Exception as exc:
            state = f"(INVALID: {exc})"
    elif os.path.exists(path):
        state = "(not a file: REMOTE will fail)"
    else:
        state = absent
    return f"  pool file          {path}  [{where}] {state}", table


def info_lines() -> list[str]:
    pool, table = _pool_line()
    lines = [pool, "  failure handling (RemoteExecutor arguments override these):"]
    settings = current_settings()
    for name, (env, _) in FAILURE_SETTINGS.items():
        explicit = getattr(settings, name)
        raw = os.environ.get(env)
        if explicit is not None:
            lines.append(f"  {name:<18} {explicit!s:<6} from configure({name}=...)")
        elif raw is not None and raw.strip():
            try:
                value = failure_setting(name)
            except ValueError as exc:
                lines.append(f"  {name:<18} ERROR {exc}")
                continue
            lines.append(f"  {name:<18} {value!s:<6} from environment variable {env}={raw}")
        elif name in table:
            lines.append(f"  {name:<18} {table[name]!s:<6} from the pool file's [executor] table")
        else:
            lines.append(f"  {name:<18} {_DEFAULTS[name]:<6} default")
    return lines
