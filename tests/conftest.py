"""Shared fixtures: every test starts with fresh default executors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import parallelize


@pytest.fixture(autouse=True)
def _fresh_default_executors() -> Iterator[None]:
    yield
    parallelize.shutdown_default_executors(wait=True)
    parallelize.configure()


EVENT_TIMEOUT = 30.0  # generous deadlock guard for waits on events
