"""Scheduler decisions under faults, driven by the fake links of ``test_scheduler``:
permanent connect errors, suspect hosts, the no-host deadline, and the pure speculation
policy. The clock is a fake; nothing sleeps."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import WAIT, FakeClock, FakePool, wait_until

from remote import HostErrorKind, HostUnavailableError, RemoteExecutor
from remote._hosts import HostState
from remote._speculation import (
    SpeculationConfig,
    feeds_slow_host,
    pool_estimate,
    remaining_time,
    worth_backup,
)


def square(x: int) -> int:
    return x * x


def test_permanent_error_on_every_host_fails_calls_at_once(
    make_executor: Callable[..., RemoteExecutor], caplog: pytest.LogCaptureFixture
) -> None:
    pool = FakePool("a", "b")
    for name in ("a", "b"):
        pool.connect_errors[name] = HostUnavailableError(
            f"host {name!r}: authentication as 'me' failed. Fix: add your key",
            HostErrorKind.AUTH,
            name,
        )
    ex = make_executor(pool, host_down_timeout=3600.0)
    future = ex.submit(square, 3)
    error = future.exception(WAIT)  # no clock advance: not the host_down_timeout path
    assert isinstance(error, HostUnavailableError)
    assert error.kind is HostErrorKind.AUTH and "Fix:" in str(error)
    wait_until(ex, lambda: all(h.state is HostState.BROKEN for h in ex._scheduler._hosts), "broken")
    again = ex.submit(square, 4).exception(WAIT)
    assert isinstance(again, HostUnavailableError) and again is not error
    # each host's problem is warned about once (test_warning_reaches_a_plain_script)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("host a cannot be used" in w for w in warnings) == 1
    assert sum("host b cannot be used" in w for w in warnings) == 1


def test_warning_reaches_a_plain_script(tmp_path: Path) -> None:
    # our loggers carry a NullHandler, which silences logging.lastResort: a problem that
    # needs a person must still show in a script that configured no logging
    script = tmp_path / "plain.py"
    script.write_text(
        "import logging\n"
        "import remote\n"
        "from remote._scheduler import warn_visibly\n"
        "warn_visibly(logging.getLogger('remote'), 'host %s cannot be used', 'a')\n"
        "logging.getLogger('remote').warning('an ordinary warning stays quiet')\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert proc.stderr.strip() == "host a cannot be used", proc.stderr


def test_broken_host_is_retried_only_after_a_long_backoff(
    make_executor: Callable[..., RemoteExecutor], clock: FakeClock
) -> None:
    pool = FakePool("a", "b", auto=True)
    pool.connect_errors["a"] = HostUnavailableError("host 'a': bad key", HostErrorKind.AUTH)
    ex = make_executor(pool)
    assert ex.submit(square, 2).result(WAIT) == 4  # b serves
    wait_until(ex, lambda: ex._scheduler._hosts[0].state is HostState.BROKEN, "a broken")
    clock.advance(5.0)  # a transient failure would be retried by now
    ex.heartbeat_now()
    wait_until(ex, lambda: True, "a scheduler round")
    assert pool.connect_failures["a"] == 1
    clock.advance(30.0)
    ex.submit(square, 1).result(WAIT)
    pool.wait(lambda: pool.connect_failures["a"] == 2, "a retried")


def test_suspect_host_gets_no_calls_and_its_calls_are_backed_up_first(
    make_executor: Callable[..., RemoteExecutor],
) -> None:
    pool = FakePool("a", "b", slots=1)
    ex = make_executor(pool)
    first, second = ex.submit(square, 1), ex.submit(square, 2)
    (host1, id1), (_, id2) = pool.wait_attempts(2)
    on_b = id1 if host1 == "b" else id2
    on_a = id2 if on_b == id1 else id1
    queued = ex.submit(square, 3)  # waits for a slot
    link_b = pool.link("b")
    assert link_b.events is not None
    link_b.events.on_link_health(link_b, True, 2.5)
    wait_until(ex, lambda: ex._scheduler._hosts[1].state is HostState.SUSPECT, "b suspect")
    pool.link("a").run(on_a)  # a frees its slot: the stuck call goes first, as a backup
    attempts = pool.wait_attempts(3)
    backup_host, backup_id = attempts[2]
    assert backup_host == "a"
    pool.link("a").run(backup_id)
    results = {first.result(WAIT), second.result(WAIT)}
    assert results == {1, 4}
    assert on_b in link_b.cancelled  # the stuck original was killed
    (_, queued_id) = pool.wait_attempts(4)[3]
    pool.link("a").run(queued_id)
    assert queued.result(WAIT) == 9
    assert all(name == "a" for name, _ in pool.attempts[2:])  # nothing new went to b
    link_b.events.on_link_health(link_b, False, 0.1)
    wait_until(ex, lambda: ex._scheduler._hosts[1].state is HostState.UP, "b back")


def test_after_the_no_host_deadline_new_calls_fail_at_once(
    make_executor: Callable[..., RemoteExecutor], clock: FakeClock
) -> None:
    pool = FakePool("a")
    pool.connect_errors["a"] = "connection refused"
    ex = make_executor(pool, host_down_timeout=10.0)
    first = ex.submit(square, 1)
    wait_until(ex, lambda: ex._scheduler._hosts[0].state is HostState.DOWN, "a down")
    clock.advance(11.0)
    ex.heartbeat_now()
    assert isinstance(first.exception(WAIT), HostUnavailableError)
    # still no host: a new call does not wait another host_down_timeout
    assert isinstance(ex.submit(square, 2).exception(WAIT), HostUnavailableError)


# -- the pure policy ------------------------------------------------------------------


def test_remaining_time() -> None:
    assert remaining_time(0.2, 1.0, 0.5) == pytest.approx(0.8)
    assert remaining_time(4.0, 1.0, 0.5) == 4.0  # straggling: as long again
    assert remaining_time(0.1, None, 0.5) == pytest.approx(0.4)  # host unknown: the pool's
    assert remaining_time(0.1, None, None) == 0.0
    assert math.isinf(remaining_time(0.1, 1.0, 1.0, suspect=True))


def test_worth_backup_and_budget() -> None:
    assert worth_backup(4.0, 1.0, 1.5)
    assert not worth_backup(1.2, 1.0, 1.5)
    assert worth_backup(math.inf, None, 1.5)
    assert not worth_backup(3.0, None, 1.5)
    config = SpeculationConfig()
    assert config.allowance(5) == 2 and config.allowance(200) == 20
    with pytest.raises(ValueError, match="budget"):
        SpeculationConfig(budget=-1)


def test_slow_host_is_fed_only_when_the_fast_hosts_cannot_drain_the_queue_sooner() -> None:
    # fast hosts complete 4 calls/s together; the slow one takes 10 s a call
    assert not feeds_slow_host(10.0, 1.0, 4.0, pending=18, slow_factor=2.0)  # 4.5 s < 10 s
    assert feeds_slow_host(10.0, 1.0, 4.0, pending=60, slow_factor=2.0)  # 15 s > 10 s
    assert feeds_slow_host(1.5, 1.0, 4.0, pending=0, slow_factor=2.0)  # not slow
    assert feeds_slow_host(None, 1.0, 4.0, pending=0, slow_factor=2.0)  # unknown yet


def test_pool_estimate_is_the_median() -> None:
    assert pool_estimate([None, 3.0, 1.0, 2.0]) == 2.0
    assert pool_estimate([1.0, 3.0]) == 2.0
    assert pool_estimate([None]) is None
