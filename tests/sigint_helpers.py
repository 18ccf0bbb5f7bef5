"""Helpers for tests that deliver a real Ctrl-C (SIGINT) to the main thread while it waits."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType

WAIT = 10.0  # how long to look for the main thread blocking before failing the test


def interrupt_main_when_blocked(
    innermost: str, inside: CodeType, on_failure: Callable[[], object]
) -> threading.Thread:
    """Send SIGINT to the main thread once it blocks in ``innermost`` under ``inside``.

    That is, once the main thread's innermost frame is a function named
    ``innermost`` called (directly or not) from the code object ``inside``.
    Polls the main thread's stack (no fixed sleeps); if it never blocks
    there, calls ``on_failure`` so that the test fails instead of hanging.
    """
    main_id = threading.main_thread().ident
    assert main_id is not None

    def run() -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(main_id)
            if frame is not None and frame.f_code.co_name == innermost and _under(frame, inside):
                signal.pthread_kill(main_id, signal.SIGINT)
                return
            time.sleep(0.001)
        on_failure()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _under(frame: FrameType | None, code: CodeType) -> bool:
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False
