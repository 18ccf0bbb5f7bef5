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

The parts: this module finds and reads the file, gives the embedded pool and applies
executor-wide recycling limits; ``remote/_pool_parse.py`` turns the tables into a
:class:`PoolConfig`, checking each value with ``remote/_pool_values.py``, resolving aliases
with ``remote/_pool_ssh.py`` and finding the controller with ``remote/_controller_host.py``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._controller_host import is_controller_host
from ._errors import PoolConfigError
from ._link import HostSpec
from ._pool_parse import PoolConfig, parse_pool
from ._pool_values import parse_size

__all__ = [
    "ENV_VAR",
    "PoolConfig",
    "PoolConfigError",
    "default_pool_path",
    "embedded_pool",
    "is_controller_host",
    "load_pool",
    "parse_pool",
    "parse_size",
    "with_recycling",
]

ENV_VAR = "PARALLELIZE_POOL_FILE"


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
