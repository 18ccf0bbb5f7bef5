"""Task control on REMOTE (issue 10): per-call timeouts enforced by the agent, running()
and cancelling running calls, recycling of slot processes, avoid_hosts and per-call backups.

Timeouts, cancels and recycling run on real agents: the embedded pool (pipes) and real
OpenSSH servers on loopback (``ssh_hosts``). What only the scheduler decides (the fallback
deadline of a stalled link, which copies are started) runs on the fake links of
``fakes.py`` with a fake clock.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from conftest import SshHosts
from fakes import WAIT, FakeClock, FakePool, wait_until

from parallelize import TaskTimeoutError
from parallelize.ext import CallOptions, where_ran
from remote import _wire
from remote._agent_client import _agent_blob, check_hello
from remote._errors import HostUnavailableError, PoolConfigError
from remote._executor import RemoteExecutor
from remote._link import HostSpec
from remote._pool_config import embedded_pool, load_pool, parse_size
from smart_future import SmartFuture

cloudpickle.register_pickle_by_value(sys.modules[__name__])

LONG = 60.0  # what a timed-out task would sleep: far beyond any limit used here


# -- tasks (pickled by value: agents cannot import this module) ------------------------


def sleep_and_record(pid_file: str, seconds: float) -> int:
    import os
    import time

    with open(pid_file, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def wait_for_gate(gate: str, pid_file: str) -> int:
    import os
    import time

    with open(pid_file, "w") as handle:
        handle.write(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()


def count_run(counter: str, seconds: float) -> None:
    import time

    with open(counter, "a") as handle:
        handle.write("run\n")
    time.sleep(seconds)


def my_pid() -> int:
    import os

    return os.getpid()


_hoard: list[bytearray] = []


def hold_memory(mib: int) -> int:
    import os

    block = bytearray(mib << 20)
    for i in range(0, len(block), 4096):  # touch every page: resident, not just reserved
        block[i] = 1
    _hoard.append(block)
    return os.getpid()


def flaky_on_first_host(marker: str) -> str:
    import os

    host = os.environ["PARALLELIZE_TEST_HOST"]
    if not os.path.exists(marker):
        with open(marker, "w") as handle:
            handle.write(host)
        raise ConnectionError(f"the service was unreachable from {host}")
    return host


def where_am_i() -> str:
    import os

    return os.environ["PARALLELIZE_TEST_HOST"]


# -- helpers -----------------------------------------------------------------------------


def poll(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def read_pid(path: Path) -> int:
    poll(lambda: path.exists() and path.read_text() != "", f"{path} to be written")
    return int(path.read_text())


@pytest.fixture
def executors() -> Iterator[Callable[..., RemoteExecutor]]:
    made: list[RemoteExecutor] = []

    def make(pool: Any = None, **kwargs: Any) -> RemoteExecutor:
        kwargs.setdefault("heartbeat_interval", 3600.0)
        ex = RemoteExecutor(embedded_pool(1) if pool is None else pool, **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=False, cancel_futures=True)
        ex._scheduler.abort("test over")
        ex._scheduler.join(WAIT)


def check_timeout_kills(ex: RemoteExecutor, tmp_path: Path, host: str) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    future = ex.submit_with(CallOptions(timeout=1), sleep_and_record, str(pid_file), LONG)
    with pytest.raises(TaskTimeoutError) as info:
        future.result(timeout=30)
    assert time.monotonic() - started < 30  # far below LONG: the limit, not the task, ended it
    error = info.value
    assert isinstance(error, TimeoutError)
    assert error.function.endswith("sleep_and_record") and error.timeout == 1
    assert error.where == f"host {host}"
    pid = read_pid(pid_file)
    poll(lambda: not alive(pid), f"the timed-out slot process {pid} to be gone")
    assert ex.submit(my_pid).result(timeout=30) not in (pid, None)  # a fresh slot serves
    attempts = ex.stats().extra["attempts"]
    outcomes = [a["outcome"] for a in attempts if a["bundle"] == attempts[0]["bundle"]]
    assert outcomes == ["timed_out"]  # one attempt: a timeout is not retried


# -- 1. timeouts ---------------------------------------------------------------------------


def test_timeout_kills_the_call_on_the_embedded_pool(
    executors: Callable[..., RemoteExecutor], tmp_path: Path
) -> None:
    ex = executors()
    check_timeout_kills(ex, tmp_path, "local")


def test_timeout_kills_the_call_over_ssh(
    ssh_hosts: SshHosts, executors: Callable[..., RemoteExecutor], tmp_path: Path
) -> None:
    specs = ssh_hosts(1, slots=1)
    ex = executors(specs)
    check_timeout_kills(ex, tmp_path, specs[0].name)


def test_a_call_within_its_timeout_succeeds_and_others_are_unaffected(
    executors: Callable[..., RemoteExecutor], tmp_path: Path
) -> None:
    ex = executors(embedded_pool(2))
    slow = ex.submit_with(CallOptions(timeout=1), sleep_and_record, str(tmp_path / "a"), LONG)
    quick = ex.submit_with(CallOptions(timeout=30), sleep_and_record, str(tmp_path / "b"), 0)
    untimed = ex.submit(sleep_and_record, str(tmp_path / "c"), 1.5)
    assert isinstance(quick.result(timeout=30), int)
    with pytest.raises(TaskTimeoutError):
        slow.result(timeout=30)
    assert isinstance(untimed.result(timeout=30), int)  # ran past 1 s: no limit of its own


def test_timeout_counts_from_the_start_not_from_submit(
    executors: Callable[..., RemoteExecutor], tmp_path: Path
) -> None:
    ex = executors()  # one slot: the second call waits for the first
    gate = tmp_path / "gate"
    first = ex.submit(wait_for_gate, str(gate), str(tmp_path / "pid1"))
    second = ex.submit_with(CallOptions(timeout=2), sleep_and_record, str(tmp_path / "pid2"), 0.2)
    read_pid(tmp_path / "pid1")
    time.sleep(3)  # what is tested: queued longer than its limit (no synchronisation here)
    assert not second.done()
    gate.touch()
    assert isinstance(first.result(timeout=30), int)
    assert isinstance(second.result(timeout=30), int)


@pytest.mark.timeout(60)
def test_the_controller_gives_up_when_the_agent_never_reports(
    make_executor: Callable[..., RemoteExecutor], clock: FakeClock
) -> None:
    pool = FakePool("a")
    ex = make_executor(pool, stall_timeout=10.0)
    future = ex.submit_with(CallOptions(timeout=2), my_pid)
    ((_, aid),) = pool.wait_attempts(1)
    assert pool.link("a").timeouts[aid] == 2  # the agent is told the limit
    clock.advance(11.0)  # the limit passed, and most of the stall allowance
    wait_until(ex, lambda: True, "a scheduler round")
    assert not future.done()
    clock.advance(1.5)
    ex.heartbeat_now()  # wake the loop: it sleeps by the real clock
    with pytest.raises(TaskTimeoutError, match="host a"):
        future.result(WAIT)
    pool.wait(lambda: aid in pool.link("a").cancelled, "the attempt to be cancelled")


@pytest.mark.timeout(60)
def test_a_timeout_cancels_the_backups_and_is_not_retried(
    make_executor: Callable[..., RemoteExecutor], clock: FakeClock
) -> None:
    pool = FakePool("a", "b")
    ex = make_executor(pool)
    future = ex.submit_with(CallOptions(timeout=3), my_pid)
    ((host, aid),) = pool.wait_attempts(1)
    other = "b" if host == "a" else "a"
    clock.advance(1.0)
    link = pool.link(host)
    assert link.events is not None
    link.events.on_link_health(link, True, 2.0)  # suspect: its call gets a backup at once
    ((_, backup),) = [a for a in pool.wait_attempts(2) if a[0] == other]
    assert pool.link(other).timeouts[backup] == pytest.approx(2.0)  # what is left of 3 s
    link.time_out(aid, 3.0)
    with pytest.raises(TaskTimeoutError, match=f"host {host}"):
        future.result(WAIT)
    pool.wait(lambda: backup in pool.link(other).cancelled, "the backup to be cancelled")
    wait_until(ex, lambda: not ex._scheduler._pending, "the queue to stay empty")
    assert len(pool.attempts) == 2


def test_timeout_must_be_valid() -> None:
    with pytest.raises(ValueError, match="timeout"):
        CallOptions(timeout=0)


# -- 2. running() and cancelling running calls ------------------------------------------------


def test_running_only_once_a_slot_has_it_and_smart_cancel_kills_it(
    executors: Callable[..., RemoteExecutor], tmp_path: Path
) -> None:
    ex = executors()  # one slot
    gate = tmp_path / "gate"
    running = ex.submit(wait_for_gate, str(gate), str(tmp_path / "pid"))
    queued = ex.submit(my_pid)
    poll(running.running, "the first call to run")
    pid = read_pid(tmp_path / "pid")
    assert not queued.running() and not queued.done()
    assert not running.cancel()  # the raw future keeps the standard semantics
    assert SmartFuture(running).cancel() and running.cancelled()
    poll(lambda: not alive(pid), f"the cancelled call's process {pid} to be gone", 5.0)
    assert queued.result(timeout=30) != pid  # the slot was replaced and serves the queue
    assert not gate.exists()


def test_smart_cancel_of_a_running_call_over_ssh(
    ssh_hosts: SshHosts, executors: Callable[..., RemoteExecutor], tmp_path: Path
) -> None:
    specs = ssh_hosts(1, slots=1)
    ex = executors(specs)
    running = ex.submit(wait_for_gate, str(tmp_path / "gate"), str(tmp_path / "pid"))
    poll(running.running, "the call to run")
    pid = read_pid(tmp_path / "pid")
    assert ex.cancel(running) and running.cancelled()
    poll(lambda: not alive(pid), f"the cancelled call's process {pid} to be gone", 5.0)
    assert ex.submit(where_am_i).result(timeout=30) == specs[0].name


def test_shutdown_cancel_futures_spares_running_calls(
    executors: Callable[..., RemoteExecutor], tmp_path: Path
) -> None:
    ex = executors()
    gate = tmp_path / "gate"
    running = ex.submit(wait_for_gate, str(gate), str(tmp_path / "pid"))
    poll(running.running, "the call to run")
    queued = ex.submit(my_pid)
    ex.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled() and not running.cancelled()
    gate.touch()
    assert isinstance(running.result(timeout=30), int)


# -- 3. recycling ---------------------------------------------------------------------------


def test_pool_file_max_tasks_per_worker_recycles_slots(
    ssh_hosts: SshHosts, executors: Callable[..., RemoteExecutor], tmp_path: Path
) -> None:
    specs = ssh_hosts(1, slots=1)
    path = ssh_hosts.pool.write_pool_file(specs, tmp_path / "pool.toml")
    path.write_text(path.read_text() + "\n[executor]\nmax_tasks_per_worker = 2\n")
    config = load_pool(path)
    assert config is not None and config.hosts[0].max_tasks_per_worker == 2
    ex = executors(config)
    pids = [ex.submit(my_pid).result(timeout=30) for _ in range(6)]
    assert len(set(pids)) == 3 and all(pids.count(p) == 2 for p in pids)
    assert ex.stats().extra["hosts"][specs[0].name]["lost"] == 0


def test_max_tasks_per_worker_one_runs_every_call_in_a_fresh_process(
    executors: Callable[..., RemoteExecutor],
) -> None:
    ex = executors(embedded_pool(2), max_tasks_per_worker=1)
    futures = [ex.submit(my_pid) for _ in range(200)]
    pids = [f.result(timeout=60) for f in futures]
    assert len(set(pids)) == 200
    assert ex.stats().succeeded == 200


def test_max_worker_memory_recycles_a_slot_over_the_limit(
    executors: Callable[..., RemoteExecutor],
) -> None:
    ex = executors(embedded_pool(1), max_worker_memory="150MiB")
    small = [ex.submit(my_pid).result(timeout=30) for _ in range(3)]
    assert len(set(small)) == 1  # under the limit: the same process throughout
    big = ex.submit(hold_memory, 200).result(timeout=30)
    assert big == small[0]  # it finishes its call first...
    after = ex.submit(my_pid).result(timeout=30)
    assert after != big  # ...then a fresh process takes over
    poll(lambda: not alive(big), f"the recycled process {big} to exit")


def test_pool_file_recycling_fields_are_validated(tmp_path: Path) -> None:
    def load(text: str) -> Any:
        path = tmp_path / "pool.toml"
        path.write_text(text)
        return load_pool(path)

    host = '[hosts.h1]\nhost = "127.0.0.2"\n'
    for table, line, field in [
        ("hosts.h1", "max_tasks_per_worker = 0", "max_tasks_per_worker"),
        ("hosts.h1", 'max_tasks_per_worker = "3"', "max_tasks_per_worker"),
        ("hosts.h1", 'max_worker_memory = "2 parsecs"', "max_worker_memory"),
        ("hosts.h1", "max_worker_memory = 0", "max_worker_memory"),
        ("executor", "max_worker_memory = 1.5", "max_worker_memory"),
        ("defaults", "max_tasks_per_worker = -1", "max_tasks_per_worker"),
    ]:
        text = f"{host}{line}\n" if table == "hosts.h1" else f"[{table}]\n{line}\n{host}"
        with pytest.raises(PoolConfigError) as info:
            load(text)
        assert info.value.entry == table and info.value.field == field, str(info.value)
        assert "Fix:" in str(info.value)
    config = load(
        '[executor]\nmax_worker_memory = "2GiB"\nmax_tasks_per_worker = 5\n'
        f'{host}max_worker_memory = "500MB"\n[hosts.h2]\nhost = "127.0.0.3"\n'
    )
    assert [(h.max_tasks_per_worker, h.max_worker_memory) for h in config.hosts] == [
        (5, 500_000_000),
        (5, 2 << 30),
    ]


def test_executor_recycling_arguments_are_validated() -> None:
    assert parse_size("512MiB") == 512 << 20 and parse_size(4096) == 4096
    with pytest.raises(ValueError, match="max_tasks_per_worker"):
        RemoteExecutor(embedded_pool(1), max_tasks_per_worker=0)
    with pytest.raises(ValueError, match='"2GiB"'):
        RemoteExecutor(embedded_pool(1), max_worker_memory="lots")


# -- 4. retries support: where a call ran, avoid_hosts ----------------------------------------


def test_avoid_hosts_sends_a_retry_to_another_host(
    ssh_hosts: SshHosts, executors: Callable[..., RemoteExecutor], tmp_path: Path
) -> None:
    specs = ssh_hosts(2, slots=1)
    ex = executors(specs)
    assert ex.submit(where_am_i).result(timeout=30)  # hosts connect on the first call
    poll(
        lambda: all(h["state"] == "up" for h in ex.stats().extra["hosts"].values()),
        "both hosts to be up (a preferred host that is not up is not waited for)",
    )
    marker = tmp_path / "failed-once"
    with pytest.raises(ConnectionError) as info:
        ex.submit(flaky_on_first_host, str(marker)).result(timeout=30)
    failed_on = where_ran(info.value)
    assert failed_on == marker.read_text() and failed_on in {s.name for s in specs}
    options = CallOptions(avoid_hosts=frozenset({failed_on}))
    for _ in range(6):  # a random policy would pick the failed host half of the time
        assert ex.submit_with(options, flaky_on_first_host, str(marker)).result(30) != failed_on


def test_avoid_hosts_is_only_a_preference(make_executor: Callable[..., RemoteExecutor]) -> None:
    pool = FakePool("a", auto=True)
    ex = make_executor(pool)
    assert ex.submit_with(CallOptions(avoid_hosts=frozenset({"a"})), my_pid).result(WAIT)


# -- 5. per-call backups ---------------------------------------------------------------------


@pytest.mark.parametrize("backups", [None, False])
@pytest.mark.timeout(60)
def test_backups_false_means_no_copy_of_that_call(
    make_executor: Callable[..., RemoteExecutor], backups: bool | None
) -> None:
    pool = FakePool("a", "b")
    ex = make_executor(pool)
    future: Future[int] = ex.submit_with(CallOptions(backups=backups), my_pid)
    ((host, aid),) = pool.wait_attempts(1)
    link = pool.link(host)
    assert link.events is not None
    link.events.on_link_health(link, True, 2.0)  # suspect: would get a backup at once
    wait_until(ex, lambda: True, "a scheduler round")
    wait_until(ex, lambda: True, "another")
    assert len(pool.attempts) == (1 if backups is False else 2)
    link.run(aid)
    assert future.result(WAIT) > 0


# -- the protocol ----------------------------------------------------------------------------


def test_time_limit_frames_round_trip_and_reject_garbage() -> None:
    frame = _wire.encode_time_limit(7, 1.5)
    ((kind, body),) = _wire.FrameBuffer().feed(frame)
    assert kind == _wire.TIME_LIMIT and _wire.decode_time_limit(body) == (7, 1.5)
    ((kind, body),) = _wire.FrameBuffer().feed(_wire.encode_timed_out(9, 2.25))
    assert kind == _wire.TIMED_OUT and _wire.decode_timed_out(body) == (9, 2.25)
    with pytest.raises(_wire.ProtocolError):
        _wire.decode_time_limit(body[:-1])
    with pytest.raises(_wire.ProtocolError):
        _wire.decode_time_limit(_wire.encode_time_limit(7, -1.0)[5:])


def test_an_agent_of_another_protocol_is_refused() -> None:
    spec = HostSpec(name="h", host="h")
    info = {"python": ".".join(map(str, sys.version_info[:3])), "cloudpickle": "3"}
    with pytest.raises(HostUnavailableError, match="protocol"):
        check_hello(spec, info)  # an agent from before TIME_LIMIT says no protocol
    check_hello(spec, {**info, "protocol": _wire.PROTOCOL})


def test_the_agent_is_told_its_recycling_limits() -> None:
    blob = _agent_blob("h", 2, 14.0, 3, 1 << 30)
    assert json.loads(blob[4:])["argv"] == ["h", "2", "14.0", "3", str(1 << 30), "0"]
