"""Measure REMOTE task control against issue 10's targets (run by hand, prints figures).

.venv/bin/python benchmarks/measure_remote_task_control.py

For the embedded pool and for one real SSH host (an sshd on 127.0.0.2 started here, as the
tests do): a 60 s call with ``timeout=1`` (when TaskTimeoutError arrives, when its process is
gone, how long the next call takes), and ``SmartFuture.cancel()`` of a running call (when its
process is gone).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "remote"))

from sshd import SshdPool

from parallelize import TaskTimeoutError
from parallelize.ext import CallOptions
from remote import RemoteExecutor
from remote._pool_config import embedded_pool
from smart_future import SmartFuture

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # hosts need not import this file


def sleeper(pid_file: str, seconds: float) -> None:
    with open(pid_file, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(seconds)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def _pid_from(path: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.exists(path):
            text = Path(path).read_text()
            if text:
                return int(text)
        time.sleep(0.002)
    raise TimeoutError(f"the call never wrote {path}")


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.002)


def _fmt(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} s, max {max(values):.3f} s"


def measure(executor: RemoteExecutor, label: str, rounds: int = 5) -> None:
    executor.submit(abs, -1).result(60)
    timed_out, gone, following, cancelled = [], [], [], []
    for _ in range(rounds):
        pid_file = tempfile.mktemp()
        start = time.monotonic()
        future = executor.submit_with(CallOptions(timeout=1), sleeper, pid_file, 60)
        try:
            future.result(30)
        except TaskTimeoutError:
            timed_out.append(time.monotonic() - start)
        else:
            raise SystemExit("the call was not timed out")
        _wait_gone(_pid_from(pid_file))
        gone.append(time.monotonic() - start)
        before = time.monotonic()
        assert executor.submit(abs, -2).result(30) == 2
        following.append(time.monotonic() - before)
        pid_file = tempfile.mktemp()
        future = executor.submit(sleeper, pid_file, 60)
        pid = _pid_from(pid_file)
        before = time.monotonic()
        assert SmartFuture(future).cancel()
        _wait_gone(pid)
        cancelled.append(time.monotonic() - before)
    print(
        f"{label}: TaskTimeoutError after submit {_fmt(timed_out)}; process gone after "
        f"submit {_fmt(gone)}; next call {_fmt(following)}; cancel -> process gone "
        f"{_fmt(cancelled)}"
    )


def main() -> None:
    executor = RemoteExecutor(embedded_pool(2), heartbeat_interval=3600)
    measure(executor, "embedded pool")
    executor.shutdown()
    pool = SshdPool(Path(tempfile.mkdtemp()))
    try:
        executor = RemoteExecutor(pool.specs(1, slots=2), heartbeat_interval=3600)
        measure(executor, "SSH (127.0.0.2)")
        executor.shutdown()
    finally:
        pool.stop_all()


if __name__ == "__main__":
    main()
