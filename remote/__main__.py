"""``python -m remote check [POOL_FILE]``: check that every host of a REMOTE pool is usable."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m remote",
        description="Tools for the REMOTE worker pool of parallelize.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="connect to every host of the pool and report what works and how to fix the rest",
        description="Connect to every host of the pool in parallel (each within the pool's "
        "connect timeout) and print, per host: address, reachable, remote Python and "
        "cloudpickle versions, slots, median round-trip latency, and the fix for each problem. "
        "Exit code: 0 every host usable, 1 some host unusable, 2 invalid pool file.",
    )
    check.add_argument(
        "pool_file",
        nargs="?",
        metavar="POOL_FILE",
        help="the pool file to check (default: $PARALLELIZE_POOL_FILE, else "
        "~/.config/parallelize/pool.toml, else the embedded local pool)",
    )
    check.add_argument(
        "--pings",
        type=int,
        default=None,
        metavar="N",
        help="round trips per host for the latency median (default 20)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ._check import PINGS, run

    pings = PINGS if args.pings is None else max(0, args.pings)
    return run(args.pool_file, pings=pings)


if __name__ == "__main__":
    sys.exit(main())
