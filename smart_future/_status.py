"""Status providers: short live summaries shown in open progress bars.

An executor that has something worth showing while a long wait is in
progress (a REMOTE pool's heartbeat summary such as ``"3 hosts, 12 in
flight, ETA 40s"``) registers a provider with
:func:`register_status_provider`.  While a ``wait_any``/``wait_all`` progress
bar is open, it calls every provider about once a second, in the waiting
thread, and shows their non-empty strings in the bar's postfix.

Providers must be cheap and must not block: they run on the waiting thread.
A provider that raises is logged (at DEBUG, on the ``smart_future`` logger)
and skipped for that refresh.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["collect_status", "register_status_provider"]

_logger = logging.getLogger("smart_future")

_providers_lock = threading.Lock()
_providers: dict[object, Callable[[], str | None]] = {}


def register_status_provider(provider: Callable[[], str | None]) -> Callable[[], None]:
    """Show ``provider()`` in the postfix of every open progress bar.

    ``provider`` is called with no arguments about once a second while a
    ``wait_any(..., progress=True)`` or ``wait_all(..., progress=True)`` bar
    is open; a non-empty string it returns is shown in the bar, None or ``""``
    shows nothing.  It runs in the waiting thread, so it must be quick and
    must not block.  Exceptions it raises are logged at DEBUG and ignored.

    Returns:
        A function that unregisters this registration.  Calling it more than
        once is harmless.
    """
    if not callable(provider):
        raise TypeError(f"status provider must be callable, not {type(provider).__name__}")
    token = object()
    with _providers_lock:
        _providers[token] = provider

    def unregister() -> None:
        with _providers_lock:
            _providers.pop(token, None)

    return unregister


def collect_status() -> list[str]:
    """The non-empty strings of every registered provider, in registration order."""
    with _providers_lock:
        providers = list(_providers.values())
    texts: list[str] = []
    for provider in providers:
        try:
            text = provider()
        except Exception:
            _logger.debug("Status provider %r raised", provider, exc_info=True)
            continue
        if text:
            texts.append(str(text))
    return texts
