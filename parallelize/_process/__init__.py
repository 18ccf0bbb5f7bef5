"""Local process pool: :class:`ProcessExecutor`.

The executor is imported lazily so that ``python -m parallelize._process._worker``
(which imports this package first) stays light and fast to start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._pool import ProcessExecutor

__all__ = ["ProcessExecutor"]


def __getattr__(name: str) -> Any:
    if name == "ProcessExecutor":
        from ._pool import ProcessExecutor

        return ProcessExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
