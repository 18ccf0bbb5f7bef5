"""Calls and waits shared by the embedded-pool tests (test_process_link, test_lane).

Registered with cloudpickle by value, as the test modules are: the pool's workers run
them without importing this file."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle

__all__ = ["WAIT", "die", "hold_until", "mark", "pid", "wait_for"]

WAIT = 60.0

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def pid() -> int:
    return os.getpid()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hold_until(started: str, gate: str) -> int:
    """Occupy a worker until the test creates *gate* (a file: workers share no memory with
    the test; polling is the call's own business, the test waits on its marker)."""
    Path(started).write_text(str(os.getpid()))
    while not os.path.exists(gate):
        time.sleep(0.005)
    return os.getpid()


def mark(path: str) -> str:
    Path(path).write_text("ran")
    return path


def wait_for(condition: Any, what: str) -> None:
    """Wait up to WAIT seconds for *condition()* (state in other processes: polled)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
