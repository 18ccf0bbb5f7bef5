"""REMOTE under messy faults, on real sshd hosts: a host cut off (iptables DROP on its
address and port, SIGSTOP without iptables), every host cut off, a permanent error on
every host, and a script that ends while calls run. Tests wait on events (futures, host
states) with generous timeouts; they assert behaviour, the benchmarks assert speed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from faults import Faults
from sshd import SshdPool

from parallelize import ParallelizeError
from remote import HostErrorKind, HostUnavailableError, RemoteExecutor
from remote._link import HostSpec

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(180)

WAIT = 90.0


def where(payload: bytes, seconds: float) -> str:
    time.sleep(seconds)
    return f"{os.environ['PARALLELIZE_TEST_HOST']}:{len(payload)}"


def host_states(ex: RemoteExecutor) -> dict[str, str]:
    return {name: h["state"] for name, h in ex.stats().extra["hosts"].items()}


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def make_executor() -> Iterator[Callable[..., RemoteExecutor]]:
    made: list[RemoteExecutor] = []

    def make(hosts: list[HostSpec], **kwargs: Any) -> RemoteExecutor:
        ex = RemoteExecutor(hosts, **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=False, cancel_futures=True)
        ex._scheduler.abort("test over")
        ex._scheduler.join(WAIT)


def test_a_cut_off_host_does_not_hold_back_the_others(
    ssh_hosts: Any, faults: Faults, make_executor: Callable[..., RemoteExecutor]
) -> None:
    hosts = ssh_hosts(3, slots=2)
    victim = hosts[2]
    ex = make_executor(hosts, stall_timeout=30.0)
    payload = os.urandom(4 << 20)  # large frames: a blocked write would stall a sender
    warm = [ex.submit(where, b"", 0.0) for _ in range(12)]
    wait(warm, WAIT)
    wait_for(lambda: all(s == "up" for s in host_states(ex).values()), "every host up")

    how = faults.blackhole(victim)
    futures = [ex.submit(where, payload, 0.05) for _ in range(40)]
    # the victim turns suspect long before stall_timeout, and the others keep going
    wait_for(lambda: host_states(ex)[victim.name] != "up", f"{victim.name} suspect ({how})")
    assert host_states(ex)[victim.name] == "suspect"
    done, _ = wait(futures, WAIT)
    assert len(done) == 40
    results = [f.result() for f in futures]
    assert all(r.endswith(f":{len(payload)}") for r in results)
    assert host_states(ex)[victim.name] == "suspect"  # still cut off: nothing came from it
    assert all(not r.startswith(f"{victim.name}:") for r in results)
    faults.heal_all()
    wait_for(lambda: host_states(ex)[victim.name] == "up", f"{victim.name} answering again")
    assert ex.submit(where, b"x", 0.0).result(WAIT).endswith(":1")


def test_every_host_cut_off_fails_pending_calls(
    ssh_hosts: Any, faults: Faults, make_executor: Callable[..., RemoteExecutor]
) -> None:
    hosts = ssh_hosts(2, slots=1)
    ex = make_executor(hosts, stall_timeout=3.0, host_down_timeout=3.0)
    wait([ex.submit(where, b"", 0.0) for _ in range(4)], WAIT)
    wait_for(lambda: all(s == "up" for s in host_states(ex).values()), "every host up")
    for spec in hosts:
        faults.blackhole(spec)
    futures = [ex.submit(where, b"", 0.0) for _ in range(6)]
    done, _ = wait(futures, WAIT)
    assert len(done) == 6
    for future in futures:
        error = future.exception()
        assert isinstance(error, ParallelizeError), error
        assert "host_down_timeout" in str(error) or "went down" in str(error), error
    assert len({id(f.exception()) for f in futures}) == 6  # one exception per call


def test_unknown_host_key_everywhere_fails_fast_with_the_fix(
    ssh_hosts: Any, make_executor: Callable[..., RemoteExecutor]
) -> None:
    hosts = ssh_hosts(2, slots=1, strict_host_key_checking=True)
    # the user's known_hosts does not know the test hosts: the first call must not wait
    # for host_down_timeout, and must say what to do
    ex = make_executor(hosts, host_down_timeout=600.0)
    started = time.monotonic()
    future = ex.submit(where, b"", 0.0)
    error = future.exception(timeout=60)
    assert isinstance(error, HostUnavailableError)
    assert error.kind is HostErrorKind.HOST_KEY_UNKNOWN
    assert "Fix:" in str(error) and "known_hosts" in str(error)
    assert time.monotonic() - started < 60
    again = ex.submit(where, b"", 0.0).exception(timeout=10)  # broken pool: fails at once
    assert isinstance(again, HostUnavailableError) and again is not error


_EXIT_SCRIPT = """
import os, sys, time
from parallelize import parallelize, Method

@parallelize(method=Method.REMOTE)
def task(i, log):
    with open(log, "a") as handle:
        handle.write(f"{i} {os.getpid()}\\n")
    time.sleep(2)
    return i

log = sys.argv[1]
futures = [task(i, log) for i in range(12)]

import atexit

def report():  # registered after the executor started, like paramiko's own exit handler
    with open(log + ".atexit", "w") as handle:
        handle.write(str(sum(f.done() for f in futures)))

atexit.register(report)
print("submitted", flush=True)
# no shutdown(), no waiting: the interpreter exits with 12 calls in flight
"""


def test_script_ending_mid_run_runs_each_call_exactly_once(ssh_hosts: Any, tmp_path: Path) -> None:
    hosts = ssh_hosts(2, slots=3)
    pool = tmp_path / "pool.toml"
    SshdPool.write_pool_file(hosts, pool)
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_EXIT_SCRIPT))
    log = tmp_path / "runs.log"
    env = dict(os.environ, PARALLELIZE_POOL_FILE=str(pool), PYTHONPATH=os.getcwd())
    proc = subprocess.run(
        [sys.executable, str(script), str(log)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    runs = sorted(int(line.split()[0]) for line in log.read_text().splitlines())
    assert runs == list(range(12)), (runs, proc.stderr[-3000:])
    # the calls were finished before any later atexit handler (paramiko's closes every
    # connection) could run
    assert (tmp_path / "runs.log.atexit").read_text() == "12"


def test_frozen_host_calls_are_rescued_by_backups(
    ssh_hosts: Any, faults: Faults, make_executor: Callable[..., RemoteExecutor]
) -> None:
    hosts = ssh_hosts(2, slots=2)
    victim = hosts[1]
    ex = make_executor(hosts, stall_timeout=60.0)
    wait([ex.submit(where, b"", 0.0) for _ in range(8)], WAIT)
    wait_for(lambda: all(s == "up" for s in host_states(ex).values()), "every host up")
    gate = threading.Event()
    futures = [ex.submit(where, b"", 1.0) for _ in range(4)]
    wait_for(lambda: ex.stats().extra["hosts"][victim.name]["in_flight"] > 0, "calls on the victim")
    faults.freeze(victim)  # SIGSTOP: the connection stays open, nothing answers
    gate.set()
    done, _ = wait(futures, WAIT)
    assert len(done) == 4
    assert {f.result().split(":")[0] for f in futures} == {hosts[0].name}
    stats = ex.stats()
    assert stats.extra["backups_won"] >= 1
