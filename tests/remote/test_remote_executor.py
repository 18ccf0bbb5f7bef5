"""RemoteExecutor end to end: real agents over real links.

Each scenario runs on real OpenSSH servers (127.0.0.2, 127.0.0.3, ..., from
the ``sshd`` fixtures of ``conftest.py``) and on local agents over pipes (the
embedded pool's LocalLink). Every host's processes see
``PARALLELIZE_TEST_HOST=<host name>``, which the tasks below use to report
where they ran or to run slower on a chosen host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from parallelize import ParallelizeError as RemoteExecutorException
from parallelize._errors import RemoteTraceback
from remote._default import create_default_executor
from remote._executor import RemoteExecutor
from remote._hosts import HostState
from remote._link import HostSpec
from remote._pool_config import embedded_pool

WAIT = 60.0


# -- tasks: the hosts cannot import this module, so its functions are pickled by value --

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def whoami(_: int = 0) -> str:
    return os.environ["PARALLELIZE_TEST_HOST"]


def work(seconds: float, slow_host: str = "slow") -> str:
    host = os.environ["PARALLELIZE_TEST_HOST"]
    time.sleep(seconds * (10 if host == slow_host else 1))
    return host


def crash() -> None:
    os._exit(7)


def raise_value(x: int) -> None:
    raise ValueError(f"remote boom {x}")


def write_pid_then_sleep(path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(120)


def process_info(_: int = 0) -> tuple[str, int, int, str]:
    return (
        os.environ.get("PARALLELIZE_TEST_HOST", "?"),
        os.getpid(),
        os.getppid(),
        os.environ.get("TMPDIR", ""),
    )


# -- helpers ---------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def agent_info(ex: RemoteExecutor) -> dict[str, dict[str, Any]]:
    """name -> HELLO info of each connected host's agent (pid, tmpdir, ...)."""

    def collect() -> dict[str, dict[str, Any]]:
        return {
            h.name: dict(h.link.hello)  # type: ignore[attr-defined]
            for h in ex._scheduler._hosts
            if h.link is not None and h.state is HostState.UP
        }

    return ex._scheduler.call(collect)


def wait_all_up(ex: RemoteExecutor) -> None:
    """Connect every host (connections are lazy: the first call starts them)."""
    ex.submit(whoami).result(WAIT)
    wait_for(
        lambda: all(h["state"] == "up" for h in ex.stats().extra["hosts"].values()),
        "every host to be up",
    )


@contextlib.contextmanager
def executor(hosts: list[HostSpec], **kwargs: Any) -> Iterator[RemoteExecutor]:
    ex = RemoteExecutor(hosts, **kwargs)
    try:
        yield ex
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        ex._scheduler.abort("test over")
        ex._scheduler.join(WAIT)
        assert not ex._scheduler.alive


# -- transports ----------------------------------------------------------------


class Cluster:
    """Local agents over pipes, each told its name by a wrapper around the interpreter."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def specs(self, n: int, slots: int) -> list[HostSpec]:
        specs = []
        for index in range(1, n + 1):
            # not "hostN": the sshd fixtures of concurrent test runs kill processes marked
            # PARALLELIZE_TEST_HOST=hostN when they clean up
            name = f"pipes{index}"
            wrapper = self.tmp_path / f"python-{name}"
            wrapper.write_text(
                f'#!/bin/sh\nPARALLELIZE_TEST_HOST={name} exec {sys.executable} "$@"\n'
            )
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
            specs.append(
                HostSpec(name=name, host="local", slots=slots, python=str(wrapper), is_local=True)
            )
        return specs

    def kill(self, ex: RemoteExecutor, spec: HostSpec) -> None:
        """Crash the host: SIGKILL its agent (its slots follow it)."""
        os.kill(agent_info(ex)[spec.name]["pid"], signal.SIGKILL)

    def processes_left(self, spec: HostSpec, pids: set[int]) -> list[int]:
        wait_for(lambda: not any(pid_alive(p) for p in pids), "processes to exit", 10.0)
        return []


class SshCluster(Cluster):
    """Real sshd servers on 127.0.0.2, ... from the ``ssh_hosts`` fixture."""

    def __init__(self, tmp_path: Path, ssh_hosts: Any) -> None:
        super().__init__(tmp_path)
        self.ssh_hosts = ssh_hosts

    def specs(self, n: int, slots: int) -> list[HostSpec]:
        specs: list[HostSpec] = self.ssh_hosts(n, slots=slots)
        return specs

    def kill(self, ex: RemoteExecutor, spec: HostSpec) -> None:
        """Crash the host: its sshd and every process of its sessions."""
        self.ssh_hosts.kill_host(spec)

    def processes_left(self, spec: HostSpec, pids: set[int]) -> list[int]:
        left: list[int] = self.ssh_hosts.wait_no_processes(spec)
        return left


@pytest.fixture(params=["local", "ssh"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Cluster:
    if request.param == "local":
        return Cluster(tmp_path)
    return SshCluster(tmp_path, request.getfixturevalue("ssh_hosts"))


# -- scenarios -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_results_across_hosts(cluster: Cluster) -> None:
    hosts = cluster.specs(3, slots=2)
    names = {h.name for h in hosts}
    with executor(hosts, heartbeat_interval=0.2) as ex:
        wait_all_up(ex)
        futures = [ex.submit(work, 0.01, "none") for i in range(60)]
        assert {f.result(WAIT) for f in futures} == names
        stats = ex.stats()
    assert stats.succeeded == 61
    assert all(d["done"] > 0 for d in stats.extra["hosts"].values())
    assert sum(d["done"] for d in stats.extra["hosts"].values()) == 61


@pytest.mark.timeout(120)
def test_straggler_host_finished_by_backups(cluster: Cluster) -> None:
    hosts = cluster.specs(3, slots=2)
    slow = hosts[2].name
    seconds = 0.4  # 4 s on the slow host
    with executor(hosts, heartbeat_interval=0.05) as ex:
        wait_all_up(ex)
        start = time.monotonic()
        futures = [ex.submit(work, seconds, slow) for _ in range(12)]
        winners = [f.result(WAIT) for f in futures]
        makespan = time.monotonic() - start
        stats = ex.stats()
    backup_wins = [r for r in stats.extra["attempts"] if r["is_backup"] and r["outcome"] == "won"]
    assert backup_wins, stats.extra["attempts"]
    assert all(r["host"] != slow for r in backup_wins)
    assert stats.extra["backups_won"] == len(backup_wins)
    # without backups the job would end when the slow host's tasks do, after 4 s at least
    assert makespan < 10 * seconds, makespan
    assert winners.count(slow) < 2


@pytest.mark.timeout(120)
def test_host_killed_mid_run_loses_nothing(cluster: Cluster) -> None:
    hosts = cluster.specs(3, slots=2)
    victim = hosts[1]
    with executor(hosts, heartbeat_interval=0.2, backups=False) as ex:
        wait_all_up(ex)
        futures = [ex.submit(work, 0.2, "none") for _ in range(30)]
        wait_for(
            lambda: ex.stats().extra["hosts"][victim.name]["in_flight"] == 2,
            "the victim running two tasks",
        )
        cluster.kill(ex, victim)
        results = [f.result(WAIT) for f in futures]
        stats = ex.stats()
    assert set(results) <= {h.name for h in hosts}
    lost = [r for r in stats.extra["attempts"] if r["outcome"] == "lost"]
    assert len(lost) >= 2 and all(r["host"] == victim.name for r in lost)
    assert stats.succeeded == 31 and stats.failed == 0


@pytest.mark.timeout(120)
def test_poisoned_bundle_fails_alone(cluster: Cluster) -> None:
    hosts = cluster.specs(3, slots=2)
    with executor(hosts, heartbeat_interval=0.2, max_attempts=3) as ex:
        wait_all_up(ex)
        poisoned = ex.submit(crash)
        others = [ex.submit(work, 0.05, "none") for _ in range(30)]
        with pytest.raises(RemoteExecutorException) as info:
            poisoned.result(WAIT)
        assert all(f.result(WAIT) in {h.name for h in hosts} for f in others)
        stats = ex.stats()
    message = str(info.value)
    assert "crash" in message and "3 infrastructure failures" in message
    assert message.count(" on host ") == 3
    for n in (1, 2, 3):
        assert f"attempt {n} on host " in message
    assert stats.extra["poisoned"] == 1 and stats.succeeded == 31


@pytest.mark.timeout(120)
def test_user_exception_carries_remote_traceback(cluster: Cluster) -> None:
    (host,) = cluster.specs(1, slots=1)
    with executor([host]) as ex:
        future = ex.submit(raise_value, 42)
        exc = future.exception(WAIT)
        stats = ex.stats()
    assert type(exc) is ValueError and str(exc) == "remote boom 42"
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert host.name in exc.__cause__.tb and "raise_value" in exc.__cause__.tb
    assert len(stats.extra["attempts"]) == 1  # not retried
    assert stats.failed == 1


@pytest.mark.timeout(120)
def test_cancel_kills_the_remote_process(cluster: Cluster, tmp_path: Path) -> None:
    (host,) = cluster.specs(1, slots=1)
    pid_file = tmp_path / "pid"
    with executor([host]) as ex:
        future = ex.submit(write_pid_then_sleep, str(pid_file))
        wait_for(pid_file.exists, "the task to start")
        pid = int(pid_file.read_text())
        assert pid_alive(pid)
        assert not future.cancel()  # the raw future refuses a running call (standard)
        assert ex.cancel(future) and future.cancelled()  # as SmartFuture.cancel() does
        wait_for(lambda: not pid_alive(pid), "the remote process to be killed")
        assert ex.submit(whoami).result(WAIT) == host.name  # the slot is usable again
        stats = ex.stats()
    assert stats.cancelled == 1
    assert stats.extra["attempts"][0]["outcome"] == "cancelled"


@pytest.mark.timeout(120)
def test_no_orphans_or_files_left(cluster: Cluster) -> None:
    hosts = cluster.specs(2, slots=2)
    ex = RemoteExecutor(hosts, heartbeat_interval=0.2)
    wait_all_up(ex)
    infos = [f.result(WAIT) for f in [ex.submit(process_info, i) for i in range(40)]]
    agents = agent_info(ex)
    ex.shutdown(wait=True)
    assert not ex._scheduler.alive
    pids = {pid for _, pid, _, _ in infos} | {a["pid"] for a in agents.values()}
    for spec in hosts:
        assert cluster.processes_left(spec, pids) == []
    assert not any(pid_alive(p) for p in pids)
    tmpdirs = {a["tmpdir"] for a in agents.values()} | {t for *_, t in infos if t}
    assert len(tmpdirs) == 2
    wait_for(lambda: not any(os.path.exists(t) for t in tmpdirs), "temp dirs removed")


# -- the embedded pool (no pool file) -------------------------------------------


@pytest.fixture
def no_pool_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_POOL_FILE", "")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty-config"))
    monkeypatch.setattr("remote._executor._embedded_logged", False)


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_pool_file")
def test_embedded_pool_without_pool_file(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="remote"):
        ex = RemoteExecutor()
        try:
            assert [h.is_local for h in ex.hosts] == [True]
            results = [f.result(WAIT) for f in [ex.submit(process_info, i) for i in range(8)]]
            assert all(pid != os.getpid() for _, pid, _, _ in results)
        finally:
            ex.shutdown()
        RemoteExecutor().shutdown()  # logged once only
    messages = [r.getMessage() for r in caplog.records if "embedded default pool" in r.message]
    assert len(messages) == 1


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_pool_file")
def test_create_default_executor_uses_embedded_pool() -> None:
    ex = create_default_executor()
    try:
        assert isinstance(ex, RemoteExecutor)
        future: Future[int] = ex.submit(pow, 2, 10)
        assert future.result(WAIT) == 1024
    finally:
        ex.shutdown()


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_pool_file")
def test_heartbeat_logs_table(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="remote"):
        ex = RemoteExecutor(heartbeat_interval=0.05)
        try:
            futures = [ex.submit(time.sleep, 0.05) for _ in range(8)]
            wait(futures, WAIT)
            wait_for(lambda: "8 done, 0 in flight, 0 pending" in caplog.text, "a status log")
        finally:
            ex.shutdown()
    assert "p50" in caplog.text and "local" in caplog.text


EXIT_SCRIPT = """
import os, sys, time
from remote._executor import RemoteExecutor
from remote._hosts import HostState
ex = RemoteExecutor(heartbeat_interval=0.1)
ex.submit(os.getpid).result(60)
futures = [ex.submit(time.sleep, 0.5) for _ in range(6)]
for f in futures:
    f.add_done_callback(lambda f: print("finished", f.exception(), flush=True))
info = ex._scheduler.call(lambda: [h.link.hello["pid"] for h in ex._scheduler._hosts])
print("agents", *info, flush=True)
# no shutdown: the interpreter exits with calls still running
"""


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_pool_file")
def test_interpreter_exit_finishes_work_without_leaks() -> None:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 30
    assert proc.stdout.count("finished None") == 6, proc.stdout
    agents = [int(p) for p in proc.stdout.split("agents", 1)[1].split()[:1]]
    assert agents
    wait_for(lambda: not any(pid_alive(p) for p in agents), "the agents to exit")


def test_shutdown_cancel_futures_keeps_calls_that_free_slots_took() -> None:
    # like a standard pool whose idle workers already picked calls up: those run,
    # only what waits for a slot is cancelled
    ex = RemoteExecutor(embedded_pool(2))
    ex.submit(time.sleep, 0).result(WAIT)  # connected, both slots warm
    futures = [ex.submit(time.sleep, 0.2) for _ in range(50)]
    ex.shutdown(wait=True, cancel_futures=True)
    ran = [f for f in futures if not f.cancelled()]
    assert 1 <= len(ran) <= 2 and all(f.result() is None for f in ran)
    assert sum(f.cancelled() for f in futures) == 50 - len(ran)
