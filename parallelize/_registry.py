"""Which factory builds the default executor of each method (see ``parallelize.ext``).

THREAD and PROCESS are built in. Any other method is provided by a package that
registers a factory: on import, or through the ``parallelize.methods`` entry points,
which are loaded (once) the first time a method has no factory yet.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor

from ._method import Method

__all__ = ["info_sections", "method_factory", "register_info_section", "register_method"]

ENTRY_POINTS = "parallelize.methods"

# What to install when a method has no factory (the package that provides it).
_PROVIDERS = {Method.REMOTE: "the `remote` package of parallelize (pip install parallelize)"}

_factories: dict[Method, Callable[[], Executor]] = {}
_sections: dict[str, Callable[[], list[str]]] = {}
_lock = threading.Lock()
_loaded = False
_load_errors: list[str] = []

logger = logging.getLogger("parallelize")


def register_method(method: Method, factory: Callable[[], Executor]) -> None:
    """Make *factory* build the default executor for *method* (the last one wins)."""
    with _lock:
        _factories[method] = factory


def register_info_section(title: str, lines: Callable[[], list[str]]) -> None:
    """Add a section to ``python -m parallelize info``: *lines* returns its text lines."""
    with _lock:
        _sections[title] = lines


def info_sections() -> list[tuple[str, Callable[[], list[str]]]]:
    """The registered info sections (plugins loaded first)."""
    _load_entry_points()
    with _lock:
        return list(_sections.items())


def _load_entry_points() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            hook = entry.load()
            hook()
        except Exception as exc:  # a broken plugin must not hide the others
            message = f"{entry.name} ({entry.value}): {type(exc).__name__}: {exc}"
            _load_errors.append(message)
            logger.warning("could not load the parallelize method %s", message)


def method_factory(method: Method) -> Callable[[], Executor]:
    """The registered factory for *method*; a clear error naming the fix if there is none."""
    factory = _factories.get(method)
    if factory is None:
        _load_entry_points()
        factory = _factories.get(method)
    if factory is None:
        provider = _PROVIDERS.get(method, f"a package that provides Method.{method.name}")
        detail = f" (loading plugins failed: {'; '.join(_load_errors)})" if _load_errors else ""
        raise RuntimeError(
            f"Method.{method.name} has no executor: install {provider}, or import it before "
            f"the first call{detail}."
        )
    return factory
