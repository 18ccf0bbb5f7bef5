"""Fixtures of the benchmarks (see ``_ratio.py`` for how ratios are measured)."""

from __future__ import annotations

from typing import Any

import pytest
from _ratio import RatioBenchmark


@pytest.fixture
def ratio_benchmark(benchmark: Any) -> RatioBenchmark:
    return RatioBenchmark(benchmark)
