"""Ctrl-C handling shared by every blocking wait in smart_future.

When a KeyboardInterrupt arrives while a thread blocks inside a SmartFuture
wait (``SmartFuture.result()``, ``SmartFuture.exception()``, using a
SmartFuture as a value, ``wait_any()``, ``wait_all()``), the waiting code
calls ``notify_interrupted()`` with the futures it was waiting for before it
re-raises the KeyboardInterrupt.  ``notify_interrupted()``:

1. cancels the waited futures that have not started running
   (``Future.cancel()`` is a no-op for running or finished futures), and
2. calls every hook registered with ``register_interrupt_hook()``, in
   registration order, in the interrupted thread.

Exceptions raised by hooks are logged on the ``smart_future`` logger and
swallowed, so they never mask the KeyboardInterrupt.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

__all__ = ["notify_interrupted", "register_interrupt_hook"]

_logger = logging.getLogger("smart_future")

# Lock acquisition is interruptible by signals on POSIX, so a plain blocking
# wait sees Ctrl-C at once.  On Windows it is not, so waits are done in
# slices of this many seconds; ``None`` means "block without slicing".
# Read at call time (tests patch it to exercise the sliced code path).
WAIT_SLICE: float | None = 0.05 if sys.platform == "win32" else None

_hooks_lock = threading.Lock()
_hooks: dict[object, Callable[[], object]] = {}


def register_interrupt_hook(callback: Callable[[], object]) -> Callable[[], None]:
    """Call ``callback()`` whenever Ctrl-C interrupts a SmartFuture wait.

    The callback is called with no arguments, in the interrupted thread,
    after the waited-for futures that had not started have been cancelled
    and before the KeyboardInterrupt propagates.  Exceptions it raises are
    logged and swallowed.  The same callable may be registered more than
    once; it is then called once per registration.

    Returns:
        A function that unregisters this registration.  Calling it more than
        once is harmless.
    """
    if not callable(callback):
        raise TypeError(f"interrupt hook must be callable, not {type(callback).__name__}")
    token = object()
    with _hooks_lock:
        _hooks[token] = callback

    def unregister() -> None:
        with _hooks_lock:
            _hooks.pop(token, None)

    return unregister


def notify_interrupted(futures: Iterable[Future[Any]]) -> None:
    """Cancel the not-yet-started ``futures`` and run the interrupt hooks.

    Never raises an exception of its own: failures while cancelling or in
    hooks are logged on the ``smart_future`` logger.  (A second
    KeyboardInterrupt arriving meanwhile does propagate.)
    """
    cancelled = 0
    for future in futures:
        try:
            if future.cancel():
                cancelled += 1
        except Exception:
            _logger.exception("Could not cancel %r after KeyboardInterrupt", future)
    if cancelled:
        _logger.debug("KeyboardInterrupt: cancelled %d pending future(s)", cancelled)
    with _hooks_lock:
        hooks = list(_hooks.values())
    for hook in hooks:
        try:
            hook()
        except KeyboardInterrupt:
            raise
        except BaseException:
            _logger.exception("Interrupt hook %r raised", hook)
