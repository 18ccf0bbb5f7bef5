"""The cluster engines' backup rules (pure logic, no cluster): ``_cluster._speculation``."""

from __future__ import annotations

from parallelize._cluster._speculation import Running, backup_allowance, choose_backup

DURATIONS = [1.0, 1.0, 1.1, 0.9]


def _straggler(call_id: int = 7, elapsed: float = 5.0) -> Running:
    return Running(call_id, elapsed, frozenset({"w0"}), 0)


def test_a_straggler_gets_a_copy_on_an_idle_worker_it_does_not_run_on() -> None:
    choice = choose_backup(
        [_straggler(), Running(8, 0.5, frozenset({"w2"}), 0)],
        DURATIONS,
        ["w0", "w1"],
        pending=0,
        max_backups=2,
        started=0,
        submitted=12,
    )
    assert choice == (7, "w1")


def test_the_extra_work_stays_within_remotes_budget() -> None:
    # REMOTE's budget: 10% of the calls submitted, but at least 2 copies.
    assert [backup_allowance(n) for n in (0, 12, 20, 29, 30, 1000)] == [2, 2, 2, 2, 3, 100]

    def choice(started: int, submitted: int) -> tuple[int, str] | None:
        return choose_backup(
            [_straggler()],
            DURATIONS,
            ["w1"],
            pending=0,
            max_backups=2,
            started=started,
            submitted=submitted,
        )

    assert choice(1, 12) == (7, "w1")
    assert choice(2, 12) is None  # the budget of 12 calls is spent
    assert choice(2, 30) == (7, "w1")
    assert choice(3, 30) is None


def test_no_copy_while_calls_wait_for_a_worker() -> None:
    assert (
        choose_backup(
            [_straggler()],
            DURATIONS,
            ["w1"],
            pending=1,
            max_backups=2,
            started=0,
            submitted=12,
        )
        is None
    )
