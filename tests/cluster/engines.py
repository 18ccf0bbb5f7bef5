"""Real Dask and Ray clusters on loopback for tests and benchmarks.

:class:`DaskCluster` runs ``dask scheduler`` and N ``dask worker`` processes as
subprocesses (real TCP on 127.0.0.1, no dashboard); :class:`RayCluster` runs
``ray start --head`` bound to 127.0.0.1 with usage stats and the dashboard off
(the Ray tests run it inside a loopback-only network namespace: see
``ray_netns.py``). Both stop everything they started on ``stop()`` and can tell
whether any of their processes is still alive.

Ports: every server binds port 0 itself and the address is read back from what
it publishes (Dask's ``--scheduler-file``, Ray's ``ray_current_cluster`` file).
Picking a "free" port here (bind 0, close, pass the number on) races with every
other process on a loaded machine, which may take the port between the close and
the server's bind ("Address already in use").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"

TIMEOUT = 60.0  # generous guard for waits on a cluster


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_until(condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Wait for state in other processes (polled every 20 ms): AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not running.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _descendants(pid: int) -> list[int]:
    """Every process whose ancestry includes *pid* (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DASK_DISTRIBUTED__DIAGNOSTICS__NVML": "False",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Independent of any token in ~/.ray: the cluster is on loopback only.
            "RAY_AUTH_MODE": "disabled",
            # Workers import the test modules' functions by name, as they would a user's.
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")]
            ),
        }
    )
    if extra:
        env.update(extra)
    return env


def _published_address(path: Path, scheduler: subprocess.Popen[bytes], timeout: float) -> str:
    """The address in the scheduler file *path*, once the scheduler has written it (it binds
    before writing; the file may be seen half-written, so it is read until it parses)."""
    found: list[str] = []

    def read() -> bool:
        if scheduler.poll() is not None:
            raise RuntimeError(f"dask scheduler exited ({scheduler.returncode}) before listening")
        try:
            found.append(str(json.loads(path.read_text())["address"]))
        except (OSError, ValueError, KeyError):
            return False
        return True

    _wait_for(read, timeout, f"the dask scheduler to write {path}")
    return found[-1]


class DaskCluster:
    """A scheduler and workers (one thread each) started with the ``dask`` command."""

    def __init__(
        self,
        log_dir: Path,
        n_workers: int = 2,
        *,
        allowed_failures: int = 2,
        worker_names: Sequence[str] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.address = ""  # known once the scheduler has published it (start)
        self._env = _env(
            {
                "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures),
                # One task per worker thread at a time: Dask counts a worker's death against
                # every task it was processing, so with the default (1.1, i.e. two tasks on a
                # one-thread worker) an innocent call queued beside a killer can be poisoned
                # with it when the machine is slow.
                "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0",
            }
        )
        self._procs: list[subprocess.Popen[bytes]] = []
        self._all_pids: set[int] = set()
        self.worker_names = list(worker_names or [f"w{i}" for i in range(n_workers)])

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.log_dir / log, "wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=self._env, start_new_session=True
            )
        self._procs.append(proc)
        self._all_pids.add(proc.pid)
        return proc

    def start(self, timeout: float = 60.0) -> DaskCluster:
        dask = str(BIN / "dask")
        scheduler_file = self.log_dir / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)  # a stale one would name a dead scheduler
        scheduler = self._spawn(
            [
                dask,
                "scheduler",
                "--host",
                LOOPBACK,
                "--port",
                "0",
                "--scheduler-file",
                str(scheduler_file),
                "--no-dashboard",
                # Never started (--no-dashboard); should it be, on loopback and any port.
                "--dashboard-address",
                f"{LOOPBACK}:0",
            ],
            "scheduler.log",
        )
        self.address = _published_address(scheduler_file, scheduler, timeout)
        for name in self.worker_names:
            self._spawn(
                [
                    dask,
                    "worker",
                    self.address,
                    "--host",
                    LOOPBACK,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--name",
                    name,
                    "--no-dashboard",
                    "--worker-port",
                    "0",
                    "--nanny-port",
                    "0",
                    "--death-timeout",
                    "30",
                ],
                f"worker-{name}.log",
            )
        from distributed import Client

        deadline = time.monotonic() + timeout
        while True:
            try:
                with Client(self.address, timeout=5) as client:
                    client.wait_for_workers(len(self.worker_names), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return self

    def pids(self) -> set[int]:
        """Every process this cluster started (scheduler, nannies, worker processes)."""
        for proc in self._procs:
            self._all_pids.update(_descendants(proc.pid))
        return self._all_pids

    def alive(self) -> list[int]:
        return [pid for pid in self.pids() if _pid_alive(pid)]

    def stop(self, timeout: float = 20.0) -> None:
        pids = self.pids()
        for proc in reversed(self._procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            _wait_for(lambda: not self.alive(), timeout, "dask processes to exit")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


class RayCluster:
    """``ray start --head`` on 127.0.0.1 (no dashboard, no usage stats), stopped by pid."""

    def __init__(self, temp_dir: Path, num_cpus: int = 2) -> None:
        self.address = ""  # known once the head has published it (start)
        # Ray's socket paths must stay short (AF_UNIX limit): use a short temp dir.
        self.temp_dir = temp_dir
        self.num_cpus = num_cpus
        self._env = _env()
        self._pids: set[int] = set()

    def start(self) -> RayCluster:
        ray = str(BIN / "ray")
        subprocess.run(
            [
                ray,
                "start",
                "--head",
                "--node-ip-address",
                LOOPBACK,
                "--port",
                "0",  # the GCS binds any free port and publishes it (read below)
                "--include-dashboard=false",
                "--num-cpus",
                str(self.num_cpus),
                "--temp-dir",
                str(self.temp_dir),
                "--disable-usage-stats",
                # No worker port range: each worker then binds port 0 itself.
            ],
            env=self._env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        # ``ray start`` returns once the head runs, having written its GCS address there.
        self.address = (self.temp_dir / "ray_current_cluster").read_text().strip()
        return self

    def _scan(self) -> set[int]:
        """This cluster's processes: those naming its temp dir, and all their descendants
        (Ray's worker processes rename themselves ``ray::...``)."""
        mark = str(self.temp_dir)
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if mark in cmd:
                found.add(int(entry.name))
        for pid in list(found):
            found.update(_descendants(pid))
        return found

    def alive(self) -> list[int]:
        self._pids.update(self._scan())
        return [pid for pid in self._pids if _pid_alive(pid)]

    def stop(self, timeout: float = 3.0) -> None:
        # Not ``ray stop``: it stops every Ray runtime of this user on the machine.
        # Only this cluster's processes are signalled, by pid.
        pids = set(self.alive())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            _wait_for(lambda: not self.alive(), timeout, "ray processes to exit")
        for pid in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            _wait_for(lambda: not self.alive(), 5.0, "ray processes to be killed")
        if not self.alive():  # its logs and sockets (about 1 MB); kept if a process lives on
            shutil.rmtree(self.temp_dir, ignore_errors=True)
