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

    job = commands.add_parser("job", help="run the streaming aggregation job (what Databricks runs)")
    _add_job_arguments(job)
    job.set_defaults(handler=_job)

    demo = commands.add_parser("demo", help="a local end-to-end federated run on the UCI HAPT activity data")
    demo.add_argument("--minutes", type=float, default=3.0, help="how long the devices train")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from fedstream.demo import DemoSettings, run_demo

    return run_demo(DemoSettings(duration_seconds=60 * args.minutes, seed=args.seed))


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-name", default="har-cnn")
    parser.add_argument("--initial-model", help="safetensors file of version 0 (used once, when no version exists)")
    parser.add_argument("--tables-root", help="folder of the Delta tables (default: <state>/tables)")
    parser.add_argument("--checkpoint", help="streaming checkpoint folder (default: <state>/checkpoints/...)")
    parser.add_argument("--status-file", help="write progress as JSON here after every micro-batch")
    parser.add_argument("--aggregation", default="{}", help="aggregation settings as JSON (AggregationConfig fields)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=500)
    parser.add_argument("--trigger-seconds", type=float, default=1.0)
    parser.add_argument("--register-every", type=int, default=10)
    parser.add_argument("--experiment", default="fedstream", help="MLflow experiment name")


def _job(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    from streaming_jobs.job import run_job
    from streaming_jobs.settings import JobSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "py4j", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    overrides = {
        "model_name": args.model_name,
        "initial_model_path": args.initial_model,
        "aggregation": json.loads(args.aggregation),
        "max_offsets_per_trigger": args.max_offsets_per_trigger,
        "trigger_interval_seconds": args.trigger_seconds,
        "register_every": args.register_every,
        "mlflow_experiment": args.experiment,
    }
    if args.tables_root:
        overrides["tables_root"] = args.tables_root
    if args.checkpoint:
        overrides["checkpoint_location"] = args.checkpoint
    settings = JobSettings.model_validate(overrides)
    run_job(settings, status_file=Path(args.status_file) if args.status_file else None)
    return 0


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
