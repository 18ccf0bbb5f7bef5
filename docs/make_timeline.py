"""Draw docs/timeline.png from a real REMOTE run with a straggler host.

Run: .venv/bin/python docs/make_timeline.py

Three local agents speak the REMOTE protocol over pipes (the embedded pool's
transport); tasks on the one named "slow" take 10x longer, and backups on the
other hosts finish the job.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_remote import connect_all, local_specs, work  # noqa: E402

from remote import RemoteExecutor  # noqa: E402


def main() -> None:
    with local_specs([("fast1", 2), ("fast2", 2), ("slow", 2)]) as specs:
        executor = RemoteExecutor(specs, heartbeat_interval=0.05)
        try:
            connect_all(executor)
            futures = [executor.submit(work, 0.1, frozenset({"slow"})) for _ in range(24)]
            [f.result(120) for f in futures]
            stats = executor.stats()
        finally:
            executor.shutdown()
    out = stats.save_timeline(ROOT / "docs" / "timeline.png", dpi=110)
    extra = stats.extra
    print(f"wrote {out}: backups started {extra['backups_started']}, won {extra['backups_won']}")


if __name__ == "__main__":
    main()
