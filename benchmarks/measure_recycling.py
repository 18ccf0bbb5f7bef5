"""Worker recycling at its extreme: ``max_tasks_per_worker=1`` and 1,000 calls (issue 10).

.venv/bin/python benchmarks/measure_recycling.py [ROUNDS]

Every call must run exactly once, each in its own worker process, and the run must not
hang (the standard library's pool deadlocked in this case: CPython gh-115634). Prints the
number of distinct worker pids and the time of each round.
"""

from __future__ import annotations

import os
import sys
import time

from parallelize import ProcessExecutor

CALLS = 1_000


def pid_of(i: int) -> tuple[int, int]:
    return i, os.getpid()


def main(rounds: int) -> None:
    for r in range(rounds):
        start = time.monotonic()
        with ProcessExecutor(2, max_tasks_per_worker=1) as executor:
            futures = [executor.submit(pid_of, i) for i in range(CALLS)]
            results = [future.result(timeout=300) for future in futures]
        assert [i for i, _ in results] == list(range(CALLS)), "a call ran twice or not at all"
        pids = {pid for _, pid in results}
        print(
            f"round {r + 1}: {CALLS} calls, {len(pids)} distinct worker pids, "
            f"{time.monotonic() - start:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
