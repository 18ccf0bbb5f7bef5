"""The default REMOTE executor used by ``@parallelize(method=Method.REMOTE)``."""

from __future__ import annotations

from ._executor import RemoteExecutor

__all__ = ["create_default_executor"]


def create_default_executor() -> RemoteExecutor:
    """A RemoteExecutor on the configured pool (``PARALLELIZE_POOL_FILE`` or the user's pool
    file, see ``load_pool``), or on the embedded default pool when none is configured."""
    return RemoteExecutor(name="remote")
