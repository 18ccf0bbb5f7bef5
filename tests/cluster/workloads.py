"""Functions the cluster tests and benchmarks run on Dask and Ray workers.

They live in their own module, on the workers' PYTHONPATH (see ``engines._env``),
and import nothing from the tests, so a worker can import them by name.
"""

from __future__ import annotations

import time


def noop(i: int) -> int:
    return i


def sleep_by_worker(i: int, seconds: float, slow_factor: float) -> int:
    """Sleep *seconds*, or *slow_factor* times longer on the Dask worker named "slow"."""
    from distributed import get_worker

    slow = get_worker().name == "slow"
    time.sleep(seconds * (slow_factor if slow else 1.0))
    return i
