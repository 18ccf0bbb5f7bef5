"""Ctrl-C while waiting: queued work is cancelled, the program stops promptly, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

SCRIPT = """
import os, sys, time
from parallelize import parallelize, Method, wait_all

@parallelize(method=Method.PROCESS)
def slow(i):
    time.sleep(60)  # the workload: far longer than the test allows
    return i

futures = [slow(i) for i in range(40)]
print("waiting", flush=True)
try:
    wait_all(futures)
except KeyboardInterrupt:
    cancelled = sum(f.cancelled() for f in futures)
    print(f"interrupted cancelled={cancelled}", flush=True)
    raise
"""


def _pids_with_marker(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find processes")
def test_ctrl_c_cancels_queued_work_and_leaves_no_orphans() -> None:
    marker = f"PARALLELIZE_TEST_MARKER={uuid.uuid4().hex}"
    env = dict(
        os.environ, PARALLELIZE_TEST_MARKER=marker.split("=", 1)[1], PARALLELIZE_PROCESS_WORKERS="2"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "waiting"
    # Wait until both workers exist, so the interrupt meets running tasks.
    deadline = time.monotonic() + 60
    while len(_pids_with_marker(marker)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_pids_with_marker(marker)) >= 3, "workers did not start"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
    line = next(line for line in out.splitlines() if line.startswith("interrupted"))
    assert int(line.split("=")[1]) >= 38 - 2  # all queued calls, not the running ones
    assert elapsed < 30, f"took {elapsed:.1f} s to stop after Ctrl-C"
    deadline = time.monotonic() + 30
    while _pids_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_with_marker(marker) == [], "worker processes outlived the program"


UNCAUGHT = """
import time
from parallelize import parallelize, Method

@parallelize(method=Method.PROCESS)
def slow(i):
    time.sleep(60)  # far longer than the test allows
    return i

futures = [slow(i) for i in range(4)]
futures[0].running()  # no wait: the Ctrl-C below lands outside every SmartFuture wait
print("submitted", flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(120)
def test_ctrl_c_outside_any_wait_still_exits_promptly() -> None:
    # A KeyboardInterrupt that reaches the top of the program, wherever it landed, means
    # the user wants out: exit does not wait for the running calls.
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(UNCAUGHT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PARALLELIZE_PROCESS_WORKERS="2"),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "submitted"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert time.monotonic() - started < 30
