"""Shared fixtures: every test starts with fresh default executors."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

import parallelize


@pytest.fixture(autouse=True)
def _fresh_default_executors() -> Iterator[None]:
    yield
    parallelize.shutdown_default_executors(wait=True)
    parallelize.configure()


EVENT_TIMEOUT = 30.0  # generous deadlock guard for waits on events


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Python's own SIGINT handler (raising KeyboardInterrupt) for the test's duration."""
    if not hasattr(signal, "pthread_kill"):
        pytest.skip("needs signal.pthread_kill")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
