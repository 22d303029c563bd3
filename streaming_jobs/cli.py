"""The ``fedstream`` command: the local stack, the streaming job, clients, the demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedstream`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    result: int = args.handler(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedstream", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    stack = commands.add_parser("stack", help="the local Kafka broker, Spark jars and MLflow store")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.set_defaults(handler=_stack)
    return parser


def _stack(args: argparse.Namespace) -> int:
    from streaming_jobs.stack.local_stack import stack_down, stack_status, stack_up

    if args.action == "up":
        status = stack_up()
    elif args.action == "down":
        status = stack_down()
    else:
        status = stack_status()
    print(status.describe())
    if args.action == "status":
        return 0 if status.healthy else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
