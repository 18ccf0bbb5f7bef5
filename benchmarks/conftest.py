"""Fixtures of the benchmarks (see ``_ratio.py`` for how ratios are measured)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from _ratio import RatioBenchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))
import ray_netns  # Ray benchmarks run in a loopback-only namespace


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
