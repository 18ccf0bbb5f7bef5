"""The default REMOTE executor used by ``@parallelize(method=Method.REMOTE)``.

Registered with ``parallelize`` when this package is imported and through the
``parallelize.methods`` entry point (``register``), so ``parallelize`` never imports it.
"""

from __future__ import annotations

from parallelize import Method
from parallelize.ext import register_info_section, register_method

from ._executor import RemoteExecutor

__all__ = ["create_default_executor", "register"]


def create_default_executor() -> RemoteExecutor:
    """A RemoteExecutor on the configured pool (``PARALLELIZE_POOL_FILE`` or the user's pool
    file, see ``load_pool``), or on the embedded default pool when none is configured."""
    return RemoteExecutor(name="remote")


def register() -> None:
    """Make this package's executor the default for Method.REMOTE, and add its section to
    ``python -m parallelize info``."""
    from ._info import info_lines

    register_method(Method.REMOTE, create_default_executor)
    register_info_section("REMOTE", info_lines)
