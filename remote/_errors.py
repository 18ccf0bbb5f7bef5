"""Exceptions of the REMOTE executor."""

from __future__ import annotations

__all__ = ["IllegalTransitionError", "RemoteExecutorException"]


class RemoteExecutorException(RuntimeError):
    """A bundle could not be run by the pool.

    Raised by a future when the infrastructure, not the user's function, failed:
    the bundle was poisoned (it killed its worker process ``max_attempts`` times;
    the message lists each attempt's host and reason), no host of the pool was
    reachable for ``host_down_timeout`` seconds, or the executor was torn down.
    """


class IllegalTransitionError(AssertionError):
    """A bundle or attempt was asked to make a state transition its state machine forbids.

    This is a bug in the scheduler, never a user error.
    """
