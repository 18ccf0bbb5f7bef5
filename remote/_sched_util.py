"""Small helpers of the REMOTE scheduler: a warning that reaches a person even without
logging configured, completing a future the user may stop at any moment, a fresh copy of
a host error per future, and closing a link without raising.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, InvalidStateError
from typing import Any

from smart_future import StoppableFuture

from ._errors import HostUnavailableError
from ._link import HostLink

__all__ = ["close_quietly", "copy_error", "logger", "settle", "start", "warn_visibly"]

logger = logging.getLogger("remote")


def warn_visibly(log: logging.Logger, message: str, *args: Any) -> None:
    """Log at WARNING; when no handler is configured anywhere (our loggers carry only a
    NullHandler, which stops ``logging.lastResort``), print it through lastResort, so a
    problem that needs a person is never silent in a plain script."""
    log.warning(message, *args)
    current: logging.Logger | None = log
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return
        if not current.propagate:
            break
        current = current.parent
    last = logging.lastResort
    if last is not None and log.isEnabledFor(logging.WARNING):
        record = log.makeRecord(log.name, logging.WARNING, "(remote)", 0, message, args, None)
        last.handle(record)


def settle(future: Future[Any], *, value: Any = None, exc: BaseException | None = None) -> bool:
    """Complete *future* with *value* or *exc*; False if the user cancelled it first.

    A RUNNING future can be stopped (``StoppableFuture.stop``) from the user's thread at
    any moment, so setting its outcome may find it cancelled: that is not an error."""
    if future.cancelled():
        return False
    if not start(future):
        return False  # cancelled a moment ago (a PENDING future is cancelled, not stopped)
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)
    except InvalidStateError:  # stopped a moment ago; its done-callback tells us
        return False
    return True


def start(future: Future[Any]) -> bool:
    """Mark *future* running unless it already is; False if it was cancelled.

    An embedded-pool host marks its calls' futures running from the PROCESS pool's result
    thread as they start in a worker (``ProcessLink``), so the check and the marking must be
    one step: the standard method raises on a future that turned running in between."""
    if future.running():  # the usual case by now: no lock (a finished future says False)
        return True
    if isinstance(future, StoppableFuture):
        return future.mark_running()
    return future.running() or future.set_running_or_notify_cancel()


def copy_error(error: HostUnavailableError) -> HostUnavailableError:
    """A fresh exception per future: a shared instance would collect every caller's frames."""
    return HostUnavailableError(str(error), error.kind, error.host)


def close_quietly(link: HostLink) -> None:
    try:
        link.close()
    except Exception as exc:
        logger.debug("closing link to %s failed: %s", link.spec.name, exc)
