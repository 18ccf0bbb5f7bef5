"""Cluster engines behind ``Method.DASK`` and ``Method.RAY``.

Imported only when one of those methods (or a ``distributed.Client``) is
used: ``import parallelize`` never imports dask or ray. The engines live in
``_dask`` (with ``_dask_scheduler`` and ``_dask_values``) and ``_ray`` (with
``_ray_backups``, ``_ray_completion`` and ``_ray_outcomes``), on the shared base
``_engine_base`` (options, timeouts, records); ``_speculation`` holds the
backup policy and ``_remote_side`` the small functions that run inside the
cluster.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

__all__ = ["create_default", "executor_for_client", "is_dask_client", "require"]

logger = logging.getLogger("parallelize")

# method value -> (module that must be importable, extra to install)
_NEEDS = {"dask": ("distributed", "dask"), "ray": ("ray", "ray")}
_local_logged: set[str] = set()


def require(engine: str) -> None:
    """Fail now, with the command to run, if *engine*'s extra is not installed."""
    module, extra = _NEEDS[engine]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ImportError(
            f"Method.{engine.upper()} needs the {module!r} package, which is not installed; "
            f"run: pip install 'parallelize[{extra}]'"
        )


def create_default(engine: str, address: str | None) -> Any:
    """The default executor of *engine*: on *address*, else on a local cluster started now.

    ``backups`` and ``max_attempts`` (RAY: ``max_retries`` = attempts - 1) come
    from ``configure(...)`` or their environment variables, as for REMOTE.
    """
    from .._config import failure_setting

    require(engine)
    if not address and engine not in _local_logged:
        _local_logged.add(engine)
        setting = f"configure({engine}_address=...) or PARALLELIZE_{engine.upper()}_ADDRESS"
        logger.info(
            "no %s cluster configured (%s): starting a local one on this machine",
            engine.capitalize(),
            setting,
        )
    backups = failure_setting("backups") is not False
    if engine == "dask":
        from ._dask import DaskExecutor

        return DaskExecutor(address=address, backups=backups, name="dask")
    from ._ray import RayExecutor

    attempts = failure_setting("max_attempts")
    retries = int(attempts) - 1 if attempts is not None else 2
    return RayExecutor(address=address, max_retries=retries, backups=backups, name="ray")


def is_dask_client(obj: object) -> bool:
    """Whether *obj* is a ``distributed.Client`` (checked without importing distributed)."""
    return any(
        cls.__name__ == "Client" and cls.__module__.startswith("distributed")
        for cls in type(obj).__mro__
    )


def executor_for_client(client: Any, backups: bool = True) -> Any:
    """An executor submitting to the user's ``distributed.Client`` (which it does not close)."""
    from ._dask import DaskExecutor

    return DaskExecutor(client, backups=backups)
