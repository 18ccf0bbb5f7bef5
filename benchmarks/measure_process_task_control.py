"""Measure PROCESS task control against issue 10's targets (run by hand, prints figures).

.venv/bin/python benchmarks/measure_process_task_control.py
"""

from __future__ import annotations

import os
import time

from parallelize import ProcessExecutor, TaskTimeoutError
from parallelize.ext import CallOptions
from smart_future import SmartFuture


def sleep_pid(path: str) -> None:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)


def getpid() -> int:
    return os.getpid()


def big(megabytes: int) -> float:
    import numpy as np

    return float(np.ones(megabytes << 17).sum())


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def rss(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def wait_pid(path: str) -> int:
    while True:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            text = ""
        if text:
            return int(text)
        time.sleep(0.001)


def main() -> None:
    path = f"/tmp/measure-tc-{os.getpid()}"
    with ProcessExecutor(2) as ex:
        ex.submit(getpid).result()
        for _ in range(3):
            if os.path.exists(path):
                os.remove(path)
            start = time.monotonic()
            future = ex.submit_with(CallOptions(timeout=1), sleep_pid, path)
            pid = wait_pid(path)
            try:
                future.result()
            except TaskTimeoutError:
                failed = time.monotonic() - start
            while not gone(pid):
                time.sleep(0.001)
            dead = time.monotonic() - start
            ex.submit(getpid).result()
            print(f"timeout=1: TaskTimeoutError after {failed:.3f} s, gone after {dead:.3f} s")
        for _ in range(3):
            os.remove(path)
            future = ex.submit(sleep_pid, path)
            pid = wait_pid(path)
            while not future.running():
                time.sleep(0.001)
            size = len(ex.worker_pids())
            start = time.monotonic()
            ok = SmartFuture(future).cancel()
            while not gone(pid):
                time.sleep(0.001)
            dead = time.monotonic() - start
            while len(ex.worker_pids()) < size or pid in ex.worker_pids():
                time.sleep(0.001)
            print(
                f"cancel running: {ok}, worker gone after {dead:.3f} s, "
                f"pool size {size} -> {len(ex.worker_pids())}"
            )
    os.remove(path)
    with ProcessExecutor(1) as ex:
        pid = ex.submit(getpid).result()
        ex.submit(big, 1).result()
        fresh = rss(pid)
        ex.submit(big, 50).result()
        time.sleep(1)  # idle
        after = rss(pid)
        print(f"idle worker RSS: fresh {fresh:.1f} MiB, after a 50 MB call {after:.1f} MiB")


if __name__ == "__main__":
    main()
