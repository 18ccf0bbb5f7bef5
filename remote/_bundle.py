"""Bundles and attempts: what the REMOTE scheduler tracks for each call.

A *bundle* is one call of a user function: the pickled function (``fn_id`` +
``fn_payload``), the pickled arguments and the caller's future. Each time the
scheduler sends it to a slot of a host it creates an *attempt*. A bundle can
have several attempts: retries after infrastructure failures and *backups*
(speculative copies of a straggler); the first attempt to finish wins.

State machines (every other transition raises :class:`IllegalTransitionError`)::

    Bundle:  PENDING -> RUNNING            an attempt was started
             PENDING -> CANCELLED          the user cancelled it before it ran
             PENDING -> FAILED             no host reachable for host_down_timeout
             RUNNING -> PENDING            every running attempt was lost: re-queued
             RUNNING -> SUCCEEDED          an attempt returned a value
             RUNNING -> FAILED             an attempt raised (user exception) or timed out
             RUNNING -> POISONED           max_attempts infrastructure failures
             RUNNING -> CANCELLED          the user cancelled it (attempts killed)
             SUCCEEDED, FAILED, POISONED, CANCELLED are terminal.

    Attempt: RUNNING -> WON                its result decided the bundle
             RUNNING -> LOST               infrastructure failure (process died, host down)
             RUNNING -> CANCELLED          a loser of a race, or cancelled by the user
             RUNNING -> TIMED_OUT          ran past the call's timeout (the agent killed it,
                                           or the controller's fallback deadline passed)

Only the scheduler thread touches these objects (see ``_scheduler``), so they
carry no locks.
"""

from __future__ import annotations

import enum
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._errors import IllegalTransitionError

if TYPE_CHECKING:
    from parallelize.ext import PickledCall

__all__ = ["Attempt", "AttemptState", "Bundle", "BundleState"]


class BundleState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    POISONED = "poisoned"
    CANCELLED = "cancelled"
    # Members are singletons compared by identity: hash them as such (Enum hashes the
    # name in Python code; these are dict keys on the hot paths of every call).
    __hash__ = object.__hash__

    @property
    def terminal(self) -> bool:
        return not _BUNDLE_TRANSITIONS[self]


class AttemptState(enum.Enum):
    RUNNING = "running"
    WON = "won"
    LOST = "lost"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    # Members are singletons compared by identity: hash them as such (Enum hashes the
    # name in Python code; these are dict keys on the hot paths of every call).
    __hash__ = object.__hash__

    @property
    def terminal(self) -> bool:
        return not _ATTEMPT_TRANSITIONS[self]


_BUNDLE_TRANSITIONS: dict[BundleState, frozenset[BundleState]] = {
    BundleState.PENDING: frozenset(
        {BundleState.RUNNING, BundleState.CANCELLED, BundleState.FAILED}
    ),
    BundleState.RUNNING: frozenset(
        {
            BundleState.PENDING,
            BundleState.SUCCEEDED,
            BundleState.FAILED,
            BundleState.POISONED,
            BundleState.CANCELLED,
        }
    ),
    BundleState.SUCCEEDED: frozenset(),
    BundleState.FAILED: frozenset(),
    BundleState.POISONED: frozenset(),
    BundleState.CANCELLED: frozenset(),
}

_ATTEMPT_TRANSITIONS: dict[AttemptState, frozenset[AttemptState]] = {
    AttemptState.RUNNING: frozenset(
        {AttemptState.WON, AttemptState.LOST, AttemptState.CANCELLED, AttemptState.TIMED_OUT}
    ),
    AttemptState.WON: frozenset(),
    AttemptState.TIMED_OUT: frozenset(),
    AttemptState.LOST: frozenset(),
    AttemptState.CANCELLED: frozenset(),
}


def bundle_transition_allowed(old: BundleState, new: BundleState) -> bool:
    return new in _BUNDLE_TRANSITIONS[old]


def attempt_transition_allowed(old: AttemptState, new: AttemptState) -> bool:
    return new in _ATTEMPT_TRANSITIONS[old]


class Attempt:
    """One run of a bundle on one slot of one host."""

    __slots__ = (
        "bundle_id",
        "end",
        "host",
        "id",
        "is_backup",
        "reason",
        "slot",
        "start",
        "state",
    )

    def __init__(
        self, attempt_id: int, bundle_id: int, host: str, slot: int, start: float, is_backup: bool
    ) -> None:
        self.id = attempt_id
        self.bundle_id = bundle_id
        self.host = host
        self.slot = slot
        self.start = start
        self.end: float | None = None
        self.is_backup = is_backup
        self.state = AttemptState.RUNNING
        self.reason = ""

    def finish(self, state: AttemptState, now: float, reason: str = "") -> None:
        if not attempt_transition_allowed(self.state, state):
            raise IllegalTransitionError(
                f"attempt {self.id} of bundle {self.bundle_id}: {self.state.name} -> {state.name}"
            )
        self.state = state
        self.end = now
        self.reason = reason

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def __repr__(self) -> str:
        backup = " backup" if self.is_backup else ""
        return (
            f"<Attempt {self.id} of bundle {self.bundle_id} on {self.host}#{self.slot}{backup}:"
            f" {self.state.name}>"
        )


class Bundle:
    """One call: the payloads, the caller's future, its attempts and its state."""

    __slots__ = (
        "allow_backups",
        "args_payload",
        "attempts",
        "avoid_hosts",
        "finished_at",
        "fn_id",
        "fn_name",
        "fn_payload",
        "future",
        "id",
        "local_call",
        "started_at",
        "state",
        "submitted_at",
        "timeout",
    )

    def __init__(
        self,
        bundle_id: int,
        fn_name: str,
        fn_payload: bytes,
        args_payload: bytes,
        future: Future[Any],
        submitted_at: float,
        *,
        timeout: float | None = None,
        allow_backups: bool = True,
        avoid_hosts: frozenset[str] = frozenset(),
        local_call: PickledCall | None = None,
    ) -> None:
        self.id = bundle_id
        self.fn_name = fn_name
        self.fn_id: int | None = None  # assigned by the scheduler (one id per distinct payload)
        self.fn_payload = fn_payload
        self.args_payload = args_payload
        self.future = future
        self.state = BundleState.PENDING
        self.attempts: list[Attempt] = []
        self.submitted_at = submitted_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        # per-call options (CallOptions): seconds each run may take; False: never start
        # backups of it; hosts to avoid when another has a free slot (earlier failures)
        self.timeout = timeout
        self.allow_backups = allow_backups
        self.avoid_hosts = avoid_hosts
        # embedded pool on PROCESS workers: the call pickled the PROCESS way (then
        # fn_payload/args_payload are those bytes too, for sizes and function ids)
        self.local_call = local_call

    def transition(self, state: BundleState, now: float) -> None:
        if not bundle_transition_allowed(self.state, state):
            raise IllegalTransitionError(
                f"bundle {self.id} ({self.fn_name}): {self.state.name} -> {state.name}"
            )
        self.state = state
        if state.terminal:
            self.finished_at = now

    def start_attempt(
        self, attempt_id: int, host: str, slot: int, now: float, *, is_backup: bool = False
    ) -> Attempt:
        """Record a new attempt; a PENDING bundle becomes RUNNING, a backup needs RUNNING."""
        if self.state is BundleState.PENDING:
            if is_backup:
                raise IllegalTransitionError(f"bundle {self.id}: backup of a PENDING bundle")
            self.transition(BundleState.RUNNING, now)
            if self.started_at is None:
                self.started_at = now
        elif self.state is not BundleState.RUNNING:
            raise IllegalTransitionError(
                f"bundle {self.id} ({self.fn_name}): new attempt while {self.state.name}"
            )
        elif not is_backup:
            raise IllegalTransitionError(
                f"bundle {self.id}: a non-backup attempt of a RUNNING bundle"
            )
        attempt = Attempt(attempt_id, self.id, host, slot, now, is_backup)
        self.attempts.append(attempt)
        return attempt

    @property
    def running_attempts(self) -> list[Attempt]:
        return [a for a in self.attempts if a.state is AttemptState.RUNNING]

    @property
    def lost_attempts(self) -> list[Attempt]:
        return [a for a in self.attempts if a.state is AttemptState.LOST]

    @property
    def backups(self) -> int:
        """How many backup attempts were ever started for this bundle."""
        return sum(1 for a in self.attempts if a.is_backup)

    @property
    def tried_hosts(self) -> frozenset[str]:
        return frozenset(a.host for a in self.attempts)

    def __repr__(self) -> str:
        return (
            f"<Bundle {self.id} {self.fn_name}: {self.state.name}, {len(self.attempts)} attempts>"
        )
