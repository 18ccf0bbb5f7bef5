"""Fixtures of the benchmarks (see ``_ratio.py`` for how ratios are measured)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _ratio import RatioBenchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))
import ray_netns  # Ray benchmarks run in a loopback-only namespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "remote"))
from sshd import SshdPool, sshd_available


def pytest_configure(config: pytest.Config) -> None:
    ray_netns.configure(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ray_netns.collection_modifyitems(config, items)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    return ray_netns.pyfunc_call(pyfuncitem)


@pytest.fixture
def ratio_benchmark(benchmark: Any) -> RatioBenchmark:
    return RatioBenchmark(benchmark)


@pytest.fixture(scope="module")
def sshd_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdPool]:
    """Real OpenSSH servers on 127.0.0.2, 127.0.0.3, ... for one benchmark module."""
    if not sshd_available():
        pytest.fail(
            "OpenSSH server (/usr/sbin/sshd) is not installed: apt-get install "
            "openssh-server (scripts/test.sh does it)"
        )
    pool = SshdPool(tmp_path_factory.mktemp("bench-sshd"))
    yield pool
    pool.stop_all()
