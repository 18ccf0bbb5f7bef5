"""Scheduler logic driven by an in-memory fake link: the test decides when attempts end.

No sleeps: the test waits on conditions (an attempt reached a host, a future
finished) and the scheduler's clock is a fake the test advances.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest
from fakes import WAIT, FakeClock, FakeLink, FakePool, KillWorker, wait_until

from parallelize import ParallelizeError as RemoteExecutorException
from parallelize._errors import PicklingError, RemoteTraceback
from remote._bundle import BundleState
from remote._executor import RemoteExecutor
from remote._heartbeat import (
    BackupCandidate,
    HostStatus,
    PoolStatus,
    backup_score,
    format_status,
    percentile,
    pick_backup,
)
from remote._hosts import HostState


def square(x: int) -> int:
    return x * x


def boom(x: int) -> int:
    raise ValueError(f"bad value {x}")


def kill_worker() -> None:
    raise KillWorker


# -- pure helpers ------------------------------------------------------------


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(range(101), 95) == 95


def test_backup_score() -> None:
    # shorter than a typical task: no backup
    assert backup_score(0.5, 1.0, 1.0, 2.0, 0) == 0.0
    assert backup_score(1.5, None, None, None, 0) == 0.0  # nothing finished yet
    base = backup_score(1.5, 5.0, 1.0, 5.0, 0)
    assert base == 1.5
    assert backup_score(1.5, 1.2, 1.0, 5.0, 0) == 3.0  # slower than its host's p95
    assert backup_score(1.5, 1.2, 1.0, 1.4, 0) == 6.0  # ... and than the global p95
    assert backup_score(1.5, None, 1.0, 1.4, 0) == 6.0  # host never finished anything
    assert backup_score(1.5, 1.2, 1.0, 1.4, 1) == 3.0  # it already has a backup
    assert backup_score(1.5, 1.2, 1.0, 1.4, 2) == 2.0


def test_pick_backup_prefers_the_worst_straggler() -> None:
    cands = [
        BackupCandidate(1, elapsed=3.0, host_p95=10.0, backups=0),  # 3 (normal for its host)
        BackupCandidate(2, elapsed=2.0, host_p95=1.0, backups=0),  # 2 x 2 x 2 = 8
        BackupCandidate(3, elapsed=4.0, host_p95=1.0, backups=1),  # 4 x 2 x 2 / 2 = 8
        BackupCandidate(4, elapsed=0.5, host_p95=0.1, backups=0),  # below p50: 0
    ]
    best = pick_backup(cands, global_p50=1.0, global_p95=1.5)
    assert best is not None and best.bundle_id == 2  # tie with 3: lower id
    assert pick_backup(cands[3:], global_p50=1.0, global_p95=1.5) is None
    assert pick_backup([], 1.0, 1.0) is None


def test_format_status() -> None:
    status = PoolStatus(
        done=10,
        in_flight=2,
        pending=3,
        succeeded=9,
        failed=1,
        poisoned=0,
        cancelled=0,
        backups_started=1,
        backups_won=1,
        p50=0.002,
        p95=1.5,
        eta=4.0,
        hosts=(
            HostStatus("alpha", "up", 2, 1, 7, 0, 0.001, 0.002, in_flight_bundles=(41, 42)),
            HostStatus("b", "down", 2, 0, 3, 2, None, None, reason="connection refused"),
        ),
    )
    text = format_status("remote", status)
    assert "10 done, 2 in flight, 3 pending" in text
    assert "ETA 4.00s" in text
    assert "alpha" in text and "1/2" in text and "41,42" in text
    assert "connection refused" in text
    assert status.as_dict()["hosts"]["b"]["lost"] == 2


# -- the scheduler, through the executor -----------------------------------


@pytest.mark.timeout(60)
def test_results_across_hosts(make_executor: Callable[..., RemoteExecutor]) -> None:
    pool = FakePool("a", "b", "c", slots=2, auto=True)
    ex = make_executor(pool)
    futures = [ex.submit(square, i) for i in range(50)]
    assert [f.result(WAIT) for f in futures] == [i * i for i in range(50)]
    hosts = {name for name, _ in pool.attempts}
    assert hosts == {"a", "b", "c"}
    stats = ex.stats()
    assert stats.succeeded == 50 and stats.live == 0
    assert stats.extra["done"] == 50
    assert len(stats.extra["attempts"]) == 50
    record = stats.extra["attempts"][0]
    assert set(record) >= {
        "bundle",
        "attempt",
        "host",
        "slot",
        "start",
        "end",
        "outcome",
        "is_backup",
    }
    assert {r["outcome"] for r in stats.extra["attempts"]} == {"won"}


@pytest.mark.timeout(60)
def test_function_sent_with_one_id(make_executor: Callable[..., RemoteExecutor]) -> None:
    pool = FakePool("a", auto=True)
    ex = make_executor(pool)
    for f in [ex.submit(square, i) for i in range(3)] + [ex.submit(boom, 1)]:
        f.exception(WAIT)
    link = pool.link("a")
    fn_ids = [link.submitted[aid][0] for _, aid in pool.attempts]
    assert fn_ids[0] == fn_ids[1] == fn_ids[2] != fn_ids[3]


def test_unpicklable_argument_fails_at_call_time(
    make_executor: Callable[..., RemoteExecutor],
) -> None:
    ex = make_executor(FakePool("a", auto=True))
    with pytest.raises(PicklingError, match="argument 'x'"):
        ex.submit(square, threading.Lock())
    assert ex.stats().submitted == 0


@pytest.mark.timeout(60)
def test_user_exception_with_remote_traceback(
    make_executor: Callable[..., RemoteExecutor],
) -> None:
    pool = FakePool("a", "b", auto=True)
    ex = make_executor(pool)
    future = ex.submit(boom, 3)
    exc = future.exception(WAIT)
    assert isinstance(exc, ValueError) and str(exc) == "bad value 3"
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "on host 'a'" in exc.__cause__.tb
    assert len(pool.attempts) == 1  # a user exception is not retried
    assert ex.stats().failed == 1


@pytest.mark.timeout(60)
def test_poison_after_max_attempts(make_executor: Callable[..., RemoteExecutor]) -> None:
    pool = FakePool("a", "b", "c", "d", auto=True)
    ex = make_executor(pool, max_attempts=3)
    bad = ex.submit(kill_worker)
    good = [ex.submit(square, i) for i in range(20)]
    with pytest.raises(RemoteExecutorException) as info:
        bad.result(WAIT)
    message = str(info.value)
    assert "kill_worker" in message and "3 infrastructure failures" in message
    assert message.count("process exited with code 9") == 3
    # each retry went to a host that had not run it yet
    tried = [
        h
        for h, aid in pool.attempts
        if pool.link(h).submitted[aid][2]
        == pool.link(pool.attempts[0][0]).submitted[pool.attempts[0][1]][2]
    ]
    assert len(set(tried)) == 3
    assert [f.result(WAIT) for f in good] == [i * i for i in range(20)]
    assert ex.stats().extra["poisoned"] == 1


@pytest.mark.timeout(60)
def test_host_down_reruns_elsewhere(make_executor: Callable[..., RemoteExecutor]) -> None:
    pool = FakePool("a", "b")
    ex = make_executor(pool)
    f1, f2 = ex.submit(square, 2), ex.submit(square, 3)
    attempts = pool.wait_attempts(2)
    on_a = [aid for h, aid in attempts if h == "a"]
    assert len(on_a) == 1
    pool.link("a").down("connection reset by peer")
    # the bundle that was on a is re-run on b once b has a free slot
    ((_, aid_b),) = [x for x in attempts if x[0] == "b"]
    pool.link("b").run(aid_b)
    attempts = pool.wait_attempts(3)
    assert attempts[2][0] == "b"
    pool.link("b").run(attempts[2][1])
    assert {f1.result(WAIT), f2.result(WAIT)} == {4, 9}
    stats = ex.stats()
    lost = [r for r in stats.extra["attempts"] if r["outcome"] == "lost"]
    assert len(lost) == 1 and "connection reset by peer" in lost[0]["reason"]
    assert stats.extra["hosts"]["a"]["state"] == "down"
    assert pool.link("a").closed


@pytest.mark.timeout(60)
def test_down_host_is_retried_with_backoff(
    make_executor: Callable[..., RemoteExecutor], clock: FakeClock
) -> None:
    pool = FakePool("a", auto=True)
    pool.connect_errors["a"] = "connection refused"
    ex = make_executor(pool, host_down_timeout=1000.0)
    future = ex.submit(square, 5)
    pool.wait(lambda: pool.connect_failures.get("a", 0) == 1, "first connect")
    wait_until(ex, lambda: ex._scheduler._hosts[0].state is HostState.DOWN, "host down")
    clock.advance(1.0)  # first backoff: 1 s
    ex.heartbeat_now()
    pool.wait(lambda: pool.connect_failures.get("a", 0) == 2, "second connect")
    wait_until(ex, lambda: ex._scheduler._hosts[0].state is HostState.DOWN, "host down again")
    clock.advance(1.5)  # second backoff is 2 s: not yet
    ex.heartbeat_now()
    wait_until(ex, lambda: True, "a scheduler round")
    assert pool.connect_failures["a"] == 2
    del pool.connect_errors["a"]
    clock.advance(0.5)
    ex.heartbeat_now()
    assert future.result(WAIT) == 25


@pytest.mark.timeout(60)
def test_no_host_reachable_fails_pending(
    make_executor: Callable[..., RemoteExecutor], clock: FakeClock
) -> None:
    pool = FakePool("a", "b")
    pool.connect_errors.update(a="connection refused", b="authentication failed")
    ex = make_executor(pool, host_down_timeout=30.0)
    futures = [ex.submit(square, i) for i in range(3)]
    wait_until(
        ex, lambda: all(h.state is HostState.DOWN for h in ex._scheduler._hosts), "hosts down"
    )
    clock.advance(29.0)
    ex.heartbeat_now()
    wait_until(ex, lambda: True, "a scheduler round")
    assert not any(f.done() for f in futures)
    clock.advance(1.0)
    ex.heartbeat_now()
    for f in futures:
        exc = f.exception(WAIT)
        assert isinstance(exc, RemoteExecutorException)
        message = str(exc)
        assert message.startswith("no host of the pool reachable for 30 s")
        assert "; host b: authentication failed" in message
        assert ": host a: connection refused; " in message
    assert ex.stats().failed == 3


@pytest.mark.timeout(60)
def test_backup_first_result_wins_and_loser_cancelled(
    make_executor: Callable[..., RemoteExecutor], clock: FakeClock
) -> None:
    pool = FakePool("a", "b")
    ex = make_executor(pool)
    fa, fb = ex.submit(square, 1), ex.submit(square, 2)
    (_, a1), (_, b1) = sorted(pool.wait_attempts(2))
    clock.advance(1.0)
    pool.link("a").run(a1)
    pool.link("b").run(b1)
    assert fa.result(WAIT) == 1 and fb.result(WAIT) == 4  # two finished: p50 = 1 s
    slow = ex.submit(square, 3)
    (host, aid) = pool.wait_attempts(3)[2]
    other = "b" if host == "a" else "a"
    ex.heartbeat_now()  # running for 0 s: not a straggler
    wait_until(ex, lambda: True, "a scheduler round")
    assert len(pool.attempts) == 3
    clock.advance(5.0)
    ex.heartbeat_now()
    (bhost, backup_id) = pool.wait_attempts(4)[3]
    assert bhost == other
    pool.link(other).run(backup_id)
    assert slow.result(WAIT) == 9
    pool.wait(lambda: aid in pool.link(host).cancelled, "loser cancelled")
    pool.link(host).finish(aid, "late")  # a loser's late result is ignored
    stats = ex.stats()
    assert stats.extra["backups_started"] == 1 and stats.extra["backups_won"] == 1
    by_attempt = {r["attempt"]: r for r in stats.extra["attempts"]}
    assert by_attempt[backup_id]["outcome"] == "won" and by_attempt[backup_id]["is_backup"]
    assert by_attempt[aid]["outcome"] == "cancelled"
    assert stats.succeeded == 3


@pytest.mark.timeout(60)
def test_backup_limits(make_executor: Callable[..., RemoteExecutor], clock: FakeClock) -> None:
    pool = FakePool("a", "b", "c", "d")
    ex = make_executor(pool, max_backups_per_bundle=2)
    warmup = [ex.submit(square, i) for i in range(2)]
    for host, aid in pool.wait_attempts(2):
        pool.link(host).run(aid)
    for f in warmup:
        f.result(WAIT)
    slow = ex.submit(square, 7)
    pool.wait_attempts(3)
    for expected in (4, 5):
        clock.advance(10.0)
        ex.heartbeat_now()
        pool.wait_attempts(expected)  # one backup per heartbeat
        wait_until(ex, lambda: True, "a scheduler round")
        assert len(pool.attempts) == expected
    clock.advance(10.0)
    ex.heartbeat_now()
    wait_until(ex, lambda: True, "a scheduler round")
    assert len(pool.attempts) == 5  # at most two backups
    hosts = [h for h, _ in pool.attempts[2:]]
    assert len(set(hosts)) == 3  # each copy on a different host
    host, aid = pool.attempts[2]
    pool.link(host).run(aid)  # the original wins after all
    assert slow.result(WAIT) == 49
    for h, a in pool.attempts[3:]:
        link = pool.link(h)
        pool.wait(functools.partial(list.__contains__, link.cancelled, a), "backups cancelled")
    assert ex.stats().extra["backups_won"] == 0


@pytest.mark.timeout(60)
def test_no_backup_when_disabled_or_pending(
    make_executor: Callable[..., RemoteExecutor], clock: FakeClock
) -> None:
    pool = FakePool("a", "b")
    ex = make_executor(pool, backups=False)
    warmup = [ex.submit(square, i) for i in range(2)]
    for host, aid in pool.wait_attempts(2):
        pool.link(host).run(aid)
    for f in warmup:
        f.result(WAIT)
    ex.submit(square, 7)
    pool.wait_attempts(3)
    clock.advance(100.0)
    ex.heartbeat_now()
    wait_until(ex, lambda: True, "a scheduler round")
    assert len(pool.attempts) == 3


@pytest.mark.timeout(60)
def test_cancel_pending_and_running(make_executor: Callable[..., RemoteExecutor]) -> None:
    pool = FakePool("a")
    ex = make_executor(pool)
    running = ex.submit(square, 1)
    queued = ex.submit(square, 2)
    ((_, aid),) = pool.wait_attempts(1)
    assert queued.cancel()
    assert ex.cancel(running)  # running on a host: kills the attempt there
    pool.wait(lambda: aid in pool.link("a").cancelled, "remote cancel")
    after = ex.submit(square, 3)
    (_, aid3) = pool.wait_attempts(2)[1]
    pool.link("a").run(aid3)
    assert after.result(WAIT) == 9
    pool.link("a").finish(aid, 1)  # too late: ignored
    stats = ex.stats()
    assert stats.cancelled == 2 and stats.succeeded == 1 and stats.live == 0
    assert running.cancelled() and queued.cancelled()


@pytest.mark.timeout(60)
def test_cancel_queued_and_shutdown(make_executor: Callable[..., RemoteExecutor]) -> None:
    pool = FakePool("a")
    ex = make_executor(pool)
    first = ex.submit(square, 1)
    rest = [ex.submit(square, i) for i in range(5)]
    ((_, aid),) = pool.wait_attempts(1)
    assert ex.cancel_queued() == 5
    assert all(f.cancelled() for f in rest)
    done = threading.Event()

    def shut_down() -> None:
        ex.shutdown(wait=True)
        done.set()

    threading.Thread(target=shut_down, daemon=True).start()
    assert not done.wait(0.05)  # waits for the running bundle
    pool.link("a").run(aid)
    assert done.wait(WAIT)
    assert first.result(0) == 1
    assert pool.link("a").closed
    assert not ex._scheduler.alive
    with pytest.raises(RuntimeError, match="shut down"):
        ex.submit(square, 1)


@pytest.mark.timeout(60)
def test_connect_lazily_in_parallel(make_executor: Callable[..., RemoteExecutor]) -> None:
    pool = FakePool("a", "b", auto=True)
    gate = threading.Event()
    pool.connect_gates["a"] = gate  # a hangs in connect: b must still serve
    ex = make_executor(pool)
    assert pool.links == {}  # nothing connected before the first call
    assert [ex.submit(square, i).result(WAIT) for i in range(4)] == [0, 1, 4, 9]
    assert {h for h, _ in pool.attempts} == {"b"}
    gate.set()


@pytest.mark.timeout(60)
def test_submit_failure_marks_host_down(
    make_executor: Callable[..., RemoteExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = FakePool("a", "b", auto=True)
    ex = make_executor(pool)

    original = FakeLink.submit

    def broken(self: FakeLink, *args: Any) -> None:
        if self.spec.name == "a":
            raise BrokenPipeError("pipe closed")
        original(self, *args)

    monkeypatch.setattr(FakeLink, "submit", broken)
    assert [ex.submit(square, i).result(WAIT) for i in range(4)] == [0, 1, 4, 9]
    assert "pipe closed" in ex.stats().extra["hosts"]["a"]["reason"]


@pytest.mark.timeout(60)
def test_heartbeat_logs_status(
    make_executor: Callable[..., RemoteExecutor], caplog: pytest.LogCaptureFixture
) -> None:
    pool = FakePool("a", "b")
    ex = make_executor(pool)
    future = ex.submit(square, 4)
    pool.wait_attempts(1)
    with caplog.at_level(logging.INFO, logger="remote"):
        ex.heartbeat_now()
        wait_until(ex, lambda: True, "a scheduler round")
    assert "0 done, 1 in flight, 0 pending" in caplog.text
    host, aid = pool.attempts[0]
    pool.link(host).run(aid)
    assert future.result(WAIT) == 16


@pytest.mark.timeout(60)
def test_bundle_states_reported(make_executor: Callable[..., RemoteExecutor]) -> None:
    pool = FakePool("a")
    ex = make_executor(pool)
    future: Future[int] = ex.submit(square, 4)
    pool.wait_attempts(1)
    states = ex._scheduler.call(lambda: [b.state for b in ex._scheduler._running.values()])
    assert states == [BundleState.RUNNING]
    assert future.running()  # an attempt was sent to a slot
    pool.link("a").run(pool.attempts[0][1])
    assert future.result(WAIT) == 16


@pytest.mark.timeout(60)
def test_retry_waits_for_an_untried_host_while_other_work_can_run(
    make_executor: Callable[..., RemoteExecutor],
) -> None:
    pool = FakePool("a", "b")
    ex = make_executor(pool)
    x = ex.submit(square, 1)
    ((host_x, aid_x),) = pool.wait_attempts(1)
    y = ex.submit(square, 2)
    (host_y, aid_y) = pool.wait_attempts(2)[1]
    assert {host_x, host_y} == {"a", "b"}
    z = ex.submit(square, 3)
    pool.link(host_x).lose(aid_x, "process killed by signal 9")
    # the free slot is on the host that ran x: z takes it, x waits for the other host
    (host_z, aid_z) = pool.wait_attempts(3)[2]
    assert host_z == host_x
    pool.link(host_y).run(aid_y)
    (host_x2, aid_x2) = pool.wait_attempts(4)[3]
    assert host_x2 == host_y
    pool.link(host_z).run(aid_z)
    pool.link(host_x2).run(aid_x2)
    assert (x.result(WAIT), y.result(WAIT), z.result(WAIT)) == (1, 4, 9)


@pytest.mark.timeout(60)
def test_retry_reuses_a_tried_host_rather_than_idle(
    make_executor: Callable[..., RemoteExecutor],
) -> None:
    pool = FakePool("a", "b")
    ex = make_executor(pool)
    x = ex.submit(square, 1)
    ((host_x, aid_x),) = pool.wait_attempts(1)
    y = ex.submit(square, 2)
    (host_y, aid_y) = pool.wait_attempts(2)[1]
    pool.link(host_x).lose(aid_x, "process killed by signal 9")
    # nothing else is pending: the retry runs on the only free slot
    (host_x2, aid_x2) = pool.wait_attempts(3)[2]
    assert host_x2 == host_x
    pool.link(host_x2).run(aid_x2)
    pool.link(host_y).run(aid_y)
    assert (x.result(WAIT), y.result(WAIT)) == (1, 4)
