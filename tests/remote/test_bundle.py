"""The bundle and attempt state machines, checked exhaustively."""

from __future__ import annotations

import itertools
from concurrent.futures import Future

import pytest

from remote._bundle import Attempt, AttemptState, Bundle, BundleState
from remote._errors import IllegalTransitionError

B = BundleState
A = AttemptState

ALLOWED_BUNDLE = {
    (B.PENDING, B.RUNNING),
    (B.PENDING, B.CANCELLED),
    (B.PENDING, B.FAILED),
    (B.RUNNING, B.PENDING),
    (B.RUNNING, B.SUCCEEDED),
    (B.RUNNING, B.FAILED),
    (B.RUNNING, B.POISONED),
    (B.RUNNING, B.CANCELLED),
}
ALLOWED_ATTEMPT = {
    (A.RUNNING, A.WON),
    (A.RUNNING, A.LOST),
    (A.RUNNING, A.CANCELLED),
    (A.RUNNING, A.TIMED_OUT),
}


def make_bundle() -> Bundle:
    return Bundle(1, "mod.fn", b"fn", b"args", Future(), 0.0)


@pytest.mark.parametrize(("old", "new"), list(itertools.product(B, B)))
def test_bundle_transitions(old: BundleState, new: BundleState) -> None:
    bundle = make_bundle()
    bundle.state = old
    if (old, new) in ALLOWED_BUNDLE:
        bundle.transition(new, 5.0)
        assert bundle.state is new
        assert (bundle.finished_at == 5.0) == new.terminal
    else:
        with pytest.raises(IllegalTransitionError):
            bundle.transition(new, 5.0)
        assert bundle.state is old


@pytest.mark.parametrize(("old", "new"), list(itertools.product(A, A)))
def test_attempt_transitions(old: AttemptState, new: AttemptState) -> None:
    attempt = Attempt(1, 1, "h", 0, 1.0, False)
    attempt.state = old
    if (old, new) in ALLOWED_ATTEMPT:
        attempt.finish(new, 3.0, "why")
        assert attempt.state is new
        assert attempt.duration == 2.0
        assert attempt.reason == "why"
    else:
        with pytest.raises(IllegalTransitionError):
            attempt.finish(new, 3.0)


def test_illegal_transition_survives_python_O() -> None:
    # a bug must not be stripped by ``python -O`` as an AssertionError would be
    assert issubclass(IllegalTransitionError, RuntimeError)
    assert not issubclass(IllegalTransitionError, AssertionError)


def test_terminal_states() -> None:
    assert {s for s in B if s.terminal} == {B.SUCCEEDED, B.FAILED, B.POISONED, B.CANCELLED}
    assert {s for s in A if s.terminal} == {A.WON, A.LOST, A.CANCELLED, A.TIMED_OUT}


def test_start_attempt_moves_pending_to_running() -> None:
    bundle = make_bundle()
    first = bundle.start_attempt(10, "a", 0, 1.0)
    assert bundle.state is B.RUNNING
    assert bundle.started_at == 1.0
    assert bundle.running_attempts == [first]
    backup = bundle.start_attempt(11, "b", 1, 2.0, is_backup=True)
    assert bundle.backups == 1
    assert bundle.tried_hosts == {"a", "b"}
    first.finish(A.LOST, 3.0, "died")
    assert bundle.lost_attempts == [first]
    assert bundle.running_attempts == [backup]


def test_retry_after_requeue() -> None:
    bundle = make_bundle()
    first = bundle.start_attempt(1, "a", 0, 1.0)
    first.finish(A.LOST, 2.0, "died")
    bundle.transition(B.PENDING, 2.0)
    bundle.start_attempt(2, "b", 0, 3.0)
    assert bundle.state is B.RUNNING
    assert bundle.started_at == 1.0  # the first start is kept
    assert [a.host for a in bundle.attempts] == ["a", "b"]


@pytest.mark.parametrize("state", [s for s in B if s.terminal])
def test_no_attempt_on_a_finished_bundle(state: BundleState) -> None:
    bundle = make_bundle()
    bundle.state = state
    with pytest.raises(IllegalTransitionError):
        bundle.start_attempt(1, "a", 0, 1.0)


def test_backup_needs_a_running_bundle() -> None:
    bundle = make_bundle()
    with pytest.raises(IllegalTransitionError):
        bundle.start_attempt(1, "a", 0, 1.0, is_backup=True)
    bundle.start_attempt(1, "a", 0, 1.0)
    with pytest.raises(IllegalTransitionError):
        bundle.start_attempt(2, "b", 0, 1.0)  # a second primary while running
