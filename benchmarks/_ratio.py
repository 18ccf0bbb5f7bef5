"""Benchmarks as ratios against a baseline measured in the same process.

The machine is shared and noisy, so an absolute time means little: each
benchmark times the candidate with pytest-benchmark and, in the untimed setup
of every round, the baseline, so the two are interleaved and share the same
noise. The ratio of medians is stored in ``extra_info`` and checked against
the target. With ``--benchmark-disable`` (the test suite's smoke run) each
benchmark runs once and no ratio is checked.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class RatioResult:
    baseline_median: float
    candidate_median: float

    @property
    def ratio(self) -> float:
        return self.candidate_median / self.baseline_median


class RatioBenchmark:
    def __init__(self, benchmark: Any) -> None:
        self.benchmark = benchmark

    @property
    def enabled(self) -> bool:
        return not getattr(self.benchmark, "disabled", False)

    def measure(
        self,
        candidate: Callable[[], Any],
        baseline: Callable[[], Any],
        *,
        rounds: int = 5,
        max_ratio: float,
        what: str,
        max_candidate_seconds: float | None = None,
        collect_garbage: bool = False,
    ) -> RatioResult | None:
        """Time *candidate* against *baseline*; assert median ratio <= *max_ratio* and,
        for targets stated in absolute terms, candidate median <= *max_candidate_seconds*.

        *collect_garbage*: a full collection (untimed) before every round of either, so
        that each round pays for its own garbage only. Without it, rounds that allocate
        many objects (10,000 futures each) trigger the cyclic GC's full passes at points
        that depend on the previous round: one side may be charged for the other's."""
        baseline_times: list[float] = []

        def setup() -> None:
            if collect_garbage:
                gc.collect()
            start = time.perf_counter()
            baseline()
            baseline_times.append(time.perf_counter() - start)
            if collect_garbage:
                gc.collect()

        self.benchmark.pedantic(candidate, setup=setup, rounds=rounds, warmup_rounds=1)
        if not self.enabled:
            return None
        result = RatioResult(
            baseline_median=statistics.median(baseline_times),
            candidate_median=self.benchmark.stats.stats.median,
        )
        self.benchmark.extra_info.update(
            baseline_median_s=result.baseline_median,
            candidate_median_s=result.candidate_median,
            ratio=result.ratio,
            target=f"ratio <= {max_ratio}",
            what=what,
        )
        print(
            f"\n{what}: baseline {result.baseline_median * 1e3:.2f} ms, "
            f"candidate {result.candidate_median * 1e3:.2f} ms, ratio {result.ratio:.3f} "
            f"(target <= {max_ratio})"
        )
        assert result.ratio <= max_ratio, (
            f"{what}: ratio {result.ratio:.3f} above target {max_ratio}"
        )
        if max_candidate_seconds is not None:
            assert result.candidate_median <= max_candidate_seconds, (
                f"{what}: {result.candidate_median:.4f} s above target {max_candidate_seconds} s"
            )
        return result
