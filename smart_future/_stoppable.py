"""A ``concurrent.futures.Future`` whose *running* call can be stopped.

The standard ``Future.cancel()`` refuses a running future, and that stays so:
code that holds the raw future keeps the standard semantics. Executors that can
stop a running call (PROCESS and REMOTE kill its process) return a
:class:`StoppableFuture`; :meth:`SmartFuture.cancel` then also stops a running
call through :meth:`StoppableFuture.stop`.

``stop()`` moves the future from RUNNING to cancelled, wakes its waiters
(``wait``, ``as_completed``) exactly as a cancelled pending future would, and
runs its done-callbacks: the executor's own callback sees ``cancelled()`` and
kills the process. It relies on the private fields of CPython's Future
(``_condition``, ``_state``, ``_waiters``, ``_invoke_callbacks``), stable since
Python 3.2 and the same ones ``concurrent.futures`` itself uses; the conformance
tests check the behaviour.
"""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any, TypeVar

__all__ = ["StoppableFuture"]

T = TypeVar("T")


_CANCELLED = (CANCELLED, CANCELLED_AND_NOTIFIED)
_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)


class StoppableFuture(Future[T]):
    """A future that an executor can kill while it runs; see the module docstring."""

    # The standard predicates take the future's lock to read one attribute. Reading it is
    # atomic on its own and the answer is a snapshot either way, while executors ask these
    # several times per call on their busiest thread: read without the lock.
    def cancelled(self) -> bool:
        return self._state in _CANCELLED

    def running(self) -> bool:
        return self._state == RUNNING

    def done(self) -> bool:
        return self._state in _DONE

    def mark_running(self) -> bool:
        """``set_running_or_notify_cancel()`` for a future that more than one thread may
        start: True if it is running now (already, or from this call), False if it was
        cancelled (its waiters are told, as the standard method does) or has finished.

        The standard method raises when the future is already running; an executor whose
        calls are started by its worker side while its scheduler may also mark them (on a
        result, for one) needs the idempotent form."""
        state: Any = self
        with state._condition:  # re-entrant: set_running_or_notify_cancel takes it again
            if state._state == RUNNING:
                return True
            if state._state not in (PENDING, CANCELLED):
                return False
            return self.set_running_or_notify_cancel()

    def stop(self) -> bool:
        """Cancel the call even if it is running; True if it is now cancelled.

        False only if it has already finished. A pending call is cancelled as
        by ``cancel()``.
        """
        if self.cancel():
            return True
        state: Any = self
        with state._condition:
            if state._state == FINISHED:
                return False
            if state._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            if state._state != RUNNING:  # defensive: cancel() just handled PENDING
                return False
            # RUNNING waiters were never told about this future; tell them now, as
            # set_running_or_notify_cancel() does for a future cancelled while pending.
            state._state = CANCELLED_AND_NOTIFIED
            for waiter in state._waiters:
                waiter.add_cancelled(self)
            state._condition.notify_all()
        state._invoke_callbacks()
        return True
