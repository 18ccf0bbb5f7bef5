"""``python -m parallelize [demo|info]``: run the demo (the default) or show the configuration."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m parallelize",
        description="parallelize: make parallel work a one-line change. "
        "Without a subcommand, runs the demo.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="run the demo: THREAD, PROCESS and REMOTE speeding up real work (the default)",
        description="Run the demo: THREAD, PROCESS and REMOTE speeding up real work.",
    )
    commands.add_parser(
        "info",
        help="show the configuration in force: executor sizes and where they came from, "
        "environment variables, the REMOTE pool file, versions, live executors",
        description="Show the configuration in force and where each value came from.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "info":
        from ._info import main as info_main

        return info_main()
    from ._demo import main as demo_main

    return demo_main()


if __name__ == "__main__":
    sys.exit(main())
