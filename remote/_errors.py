"""Exceptions of the REMOTE executor (part of the :class:`parallelize.ParallelizeError` family).

``HostUnavailableError.kind`` says *why* a host cannot be used, so that the scheduler can
tell a transient failure (retry with backoff) from a permanent one (fail fast: retrying a
refused key or a wrong Python never helps), and ``python -m remote check`` can print the
fix without reading message text.
"""

from __future__ import annotations

import enum
import warnings
from typing import Any

from parallelize import ParallelizeError

__all__ = ["HostErrorKind", "HostUnavailableError", "IllegalTransitionError", "PoolConfigError"]


class HostErrorKind(enum.Enum):
    """Why a host is unavailable. ``permanent`` kinds need a fix by a person."""

    UNREACHABLE = "unreachable"  # refused, no route, name does not resolve
    TIMEOUT = "timeout"  # no answer within connect_timeout
    SSH = "ssh"  # the SSH handshake or session failed
    LINK_LOST = "link lost"  # an established connection broke or went silent
    HOST_KEY_UNKNOWN = "host key unknown"
    HOST_KEY_MISMATCH = "host key mismatch"
    AUTH = "authentication"
    VERSION = "version"  # Python major.minor differs, or cloudpickle is missing
    AGENT_START = "agent start"  # the worker agent exited or hung before saying hello
    NOISY_SHELL = "noisy shell"  # the login shell printed text before the agent started
    CONFIG = "config"  # the host's entry cannot work (interpreter not found, bad key file)

    @property
    def permanent(self) -> bool:
        return self in _PERMANENT


_PERMANENT = frozenset(
    {
        HostErrorKind.HOST_KEY_UNKNOWN,
        HostErrorKind.HOST_KEY_MISMATCH,
        HostErrorKind.AUTH,
        HostErrorKind.VERSION,
        HostErrorKind.AGENT_START,
        HostErrorKind.NOISY_SHELL,
        HostErrorKind.CONFIG,
    }
)


class HostUnavailableError(ParallelizeError, ConnectionError):
    """A host could not be reached or is unusable; the message names the host, the
    problem and the fix, ``kind`` classifies it and ``host`` names the pool entry."""

    def __init__(
        self, message: str, kind: HostErrorKind = HostErrorKind.UNREACHABLE, host: str = ""
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.host = host

    @property
    def permanent(self) -> bool:
        return self.kind.permanent

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.kind, self.host))


class PoolConfigError(ParallelizeError, ValueError):
    """The pool file is missing or invalid. The message names the file, entry and field
    and the fix; the same are in ``path``, ``entry`` and ``field`` (None where unknown)."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        entry: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.entry = entry
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_pool_error, (str(self), self.path, self.entry, self.field))


def _rebuild_pool_error(
    message: str, path: str | None, entry: str | None, field: str | None
) -> PoolConfigError:
    return PoolConfigError(message, path=path, entry=entry, field=field)


class IllegalTransitionError(RuntimeError):
    """A state machine (bundle, attempt, host, link) was asked for a transition it forbids.

    This is a bug in the scheduler, never a user error. It is a RuntimeError, not an
    AssertionError, so ``python -O`` cannot strip the checks that raise it.
    """


def deprecated_alias(name: str) -> type[ParallelizeError]:
    """``RemoteExecutorException`` is the old name of :class:`ParallelizeError`."""
    warnings.warn(
        f"remote.{name} is deprecated: catch parallelize.ParallelizeError (or one of its "
        "subclasses: TaskLostError, PoisonedCallError, HostUnavailableError)",
        DeprecationWarning,
        stacklevel=3,
    )
    return ParallelizeError
