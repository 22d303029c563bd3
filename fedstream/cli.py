"""The ``fedstream`` command: the local stack, the streaming job, clients, the demo."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from fedstream.demo_data import TableSource
    from streaming_jobs.settings import JobSettings
    from streaming_jobs.tables import TableLocations


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedstream`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    missing = missing_modules(args.handler.__name__)
    if missing:
        print(_install_hint(_command_name(args), missing), file=sys.stderr)
        return 2
    try:
        result: int = args.handler(args)
    except ModuleNotFoundError as error:
        module = (error.name or "").partition(".")[0]
        if module not in _EXTRA_OF_MODULE:
            raise
        print(_install_hint(_command_name(args), [module]), file=sys.stderr)
        return 2
    return result


# What each command imports beyond the core install, by handler; the extra that brings each module. A client-only
# install (`fedstream[client]`) lacks the server's modules: the command then names the extra instead of a traceback.
_SERVER_TABLES = ("pyspark", "delta")
_REQUIRED_MODULES: dict[str, tuple[str, ...]] = {
    "_stack": ("kafka",),  # `stack up` also needs pyspark: the dispatch check names the extra when it is missing
    "_job": (*_SERVER_TABLES, "mlflow", "kafka"),
    "_job_key": ("cryptography",),
    "_clients_keygen": ("cryptography",),
    "_clients_enrol": _SERVER_TABLES,
    "_clients_revoke": _SERVER_TABLES,
    "_audit": _SERVER_TABLES,
    "_export": (*_SERVER_TABLES, "torch"),
    "_report": _SERVER_TABLES,
    "_topics": ("kafka",),
    "_demo": ("torch", "kafka", *_SERVER_TABLES, "mlflow"),
}
_EXTRA_OF_MODULE: dict[str, str] = {
    "pyspark": "server",
    "delta": "server",
    "mlflow": "server",
    "pyarrow": "server",
    "pandas": "server",
    "dp_accounting": "server",
    "kafka": "client",
    "torch": "client",
    "cryptography": "client",
}
_PACKAGE_OF_MODULE = {"delta": "delta-spark", "kafka": "kafka-python", "dp_accounting": "dp-accounting"}
_COMMAND_GROUPS = (
    ("commands without Spark", "fedstream[client]", "clients keygen, job-key, topics, databricks grants"),
    ("server commands", "fedstream[server]", "job, clients enrol|revoke, audit, export, report"),
    ("development, from a checkout", "fedstream[dev]", "stack, demo"),
)


def missing_modules(handler_name: str) -> list[str]:
    """The modules the command run by ``handler_name`` needs that this install lacks (found without importing)."""
    return [module for module in _REQUIRED_MODULES.get(handler_name, ()) if importlib.util.find_spec(module) is None]


def _command_name(args: argparse.Namespace) -> str:
    handler_name: str = args.handler.__name__
    name = handler_name.lstrip("_").replace("clients_", "clients ").replace("databricks_", "databricks ")
    question = f" {args.question}" if handler_name == "_audit" else ""
    return name.replace("_", "-") + question


def _install_hint(command: str, missing: Sequence[str]) -> str:
    extras = sorted({_EXTRA_OF_MODULE.get(module, "dev") for module in missing})
    packages = [_PACKAGE_OF_MODULE.get(module, module) for module in missing]
    named = packages[0] if len(packages) == 1 else ", ".join(packages[:-1]) + " and " + packages[-1]
    return (
        f"fedstream {command} needs {named}, which this install lacks; "
        f"install them with: pip install 'fedstream[{','.join(extras)}]'"
    )


def _commands_epilog() -> str:
    server_installed = not missing_modules("_report")
    lines = []
    for title, extra, commands in _COMMAND_GROUPS:
        absent = " (not installed here)" if extra == "fedstream[server]" and not server_installed else ""
        lines.append(f"{title}: {commands}\n  pip install '{extra}'{absent}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedstream",
        description=__doc__,
        epilog=_commands_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="commands")

    stack = commands.add_parser("stack", help="the local Kafka broker, Spark jars and MLflow store")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.set_defaults(handler=_stack)

    job = commands.add_parser("job", help="run the streaming aggregation job (what Databricks runs)")
    _add_job_arguments(job)
    job.set_defaults(handler=_job)

    job_key = commands.add_parser(
        "job-key", help="make the job's signing key pair (private: the secret store; public: every client)"
    )
    job_key.add_argument("--out", default=".", help="folder for fedstream-job.key and fedstream-job.pub")
    job_key.set_defaults(handler=_job_key)

    clients = commands.add_parser("clients", help="client identities: key pairs, enrolment, revocation")
    client_commands = clients.add_subparsers(title="actions", required=True)
    keygen = client_commands.add_parser("keygen", help="create a key pair on the device (the private key stays there)")
    keygen.add_argument(
        "client_id", nargs="?", help="the client's id (default: a pseudonym derived from the new public key)"
    )
    keygen.add_argument("--out", default=".", help="folder for <client_id>.key and <client_id>.pub")
    keygen.set_defaults(handler=_clients_keygen)
    enrol = client_commands.add_parser("enrol", help="trust public keys (.pub files or folders of them)")
    enrol.add_argument("paths", nargs="+")
    enrol.add_argument("--tables-root", help="folder of the Delta tables (default: <state>/tables)")
    enrol.set_defaults(handler=_clients_enrol)
    revoke = client_commands.add_parser("revoke", help="stop trusting clients' keys")
    revoke.add_argument("client_ids", nargs="+")
    revoke.add_argument("--tables-root", help="folder of the Delta tables (default: <state>/tables)")
    revoke.set_defaults(handler=_clients_revoke)

    audit = commands.add_parser("audit", help="what made a model: lineage, recomputation, clients, rejections")
    audit_commands = audit.add_subparsers(title="questions", required=True)
    for name, help_text in [
        ("lineage", "the parent chain of a version with its updates, clients, weights and staleness"),
        ("verify", "recompute versions 1..VERSION from their parents and recorded updates; check the hash chain"),
        ("client", "a client's accepted updates (and the version each went into) and its rejections"),
        ("rejected", "rejected messages by reason and hour"),
    ]:
        question = audit_commands.add_parser(name, help=help_text)
        if name in ("lineage", "verify"):
            question.add_argument("version", type=int)
        if name == "client":
            question.add_argument("client_id")
        question.add_argument("--model-name", default="har-cnn")
        question.add_argument("--tables-root", help="folder of the Delta tables (default: <state>/tables)")
        question.add_argument("--as-of", help="read the tables as of a Delta version number or a timestamp")
        question.add_argument("--json", action="store_true", help="print JSON instead of a table")
        question.set_defaults(handler=_audit, question=name)

    export = commands.add_parser("export", help="write a global version as a TorchScript or ONNX file")
    export.add_argument("version", type=int)
    export.add_argument("--model-name", default="har-cnn")
    export.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    export.add_argument("--out", required=True, help="the file to write")
    export.add_argument("--tables-root", help="folder of the Delta tables (default: <state>/tables)")
    export.add_argument("--architecture", help="a producers.models architecture name (default: the model name)")
    export.set_defaults(handler=_export)

    report = commands.add_parser(
        "report", help="one self-contained HTML page: versions, staleness, rejections, clients (pseudonymous), ε"
    )
    report.add_argument("--model-name", default="har-cnn")
    report.add_argument("--tables-root", help="folder of the Delta tables (default: <state>/tables)")
    report.add_argument("--out", default="report.html", help="the HTML file to write")
    report.set_defaults(handler=_report)

    topics = commands.add_parser(
        "topics", help="create fl.updates and fl.models on the cluster FEDSTREAM_KAFKA_* names (SASL/TLS too)"
    )
    topic_commands = topics.add_subparsers(title="actions", required=True)
    create = topic_commands.add_parser(
        "create",
        aliases=["ensure"],
        help="create the topics that are missing with fedstream's settings; report those found (run as an admin)",
    )
    create.add_argument("--replication-factor", type=int, default=3, help="replicas of each partition (default 3)")
    create.add_argument("--updates-partitions", type=int, default=3, help="partitions of fl.updates (default 3)")
    create.add_argument("--models-partitions", type=int, default=1, help="partitions of fl.models (default 1)")
    create.add_argument(
        "--max-message-bytes",
        type=int,
        help="largest message value every party uses (default 1,000,000 bytes, which fits stock Kafka); at most "
        "the plan's cap minus 4096 (the topics take values of this size plus room for key and headers)",
    )
    create.set_defaults(handler=_topics)

    workspace = commands.add_parser("databricks", help="Unity Catalog set-up printed as SQL for a workspace")
    workspace_commands = workspace.add_subparsers(title="actions", required=True)
    grants = workspace_commands.add_parser(
        "grants", help="print the GRANT statements for the job's principal and for auditors (run them as an owner)"
    )
    grants.add_argument("--catalog", default="fedstream")
    grants.add_argument("--schema", default="federated")
    grants.add_argument("--volume", default="fedstream", help="the volume of the checkpoint and the initial model")
    grants.add_argument("--job-principal", help="application id of the service principal the job runs as")
    grants.add_argument("--auditors", help="group that may read the auditor's views (and nothing else)")
    grants.add_argument("--warehouse-id", help="SQL warehouse the auditors query with (prints a CLI command)")
    grants.set_defaults(handler=_databricks_grants)

    demo = commands.add_parser(
        "demo", help="a local end-to-end federated run on the UCI HAPT activity data, or on your own table"
    )
    demo.add_argument("--minutes", type=float, default=3.0, help="how long the devices train")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--dp-noise-multiplier", type=float, help="client-level DP: Gaussian noise sigma (off unless given)"
    )
    demo.add_argument("--dp-clip-norm", type=float, default=0.5, help="client-level DP: L2 clip norm C")
    demo.add_argument(
        "--mode",
        choices=("fedbuff", "fedavg"),
        default="fedbuff",
        help="fedbuff: asynchronous, staleness-weighted (default); fedavg: synchronous rounds of K updates from a "
        "cohort drawn per version; the summary compares wall time to the same accuracy with the other mode's last run",
    )
    demo.add_argument("--buffer-size", type=int, help="K: updates per version or per round (default 10)")
    demo.add_argument(
        "--aggregate-bursts", action="store_true", help="a micro-batch of more than K updates makes one version"
    )
    demo.add_argument(
        "--personalize",
        nargs="?",
        const="both",
        choices=("head", "fine-tune", "both"),
        help="personalized devices: each keeps its classifier head (head), fine-tunes the final global model on its "
        "own data (fine-tune), or both (the default when given without a value); the summary adds each device's "
        "accuracy on its own validation data with the global and with its personalized model",
    )
    _add_table_arguments(demo)
    demo.set_defaults(handler=_demo)
    return parser


def _clients_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from producers.identity import ClientIdentity

    identity = ClientIdentity.generate(args.client_id) if args.client_id else ClientIdentity.pseudonymous()
    private_path, public_path = identity.save(Path(args.out))
    print(f"client id  : {identity.client_id}")
    print(f"private key: {private_path} (keep it on the device)\npublic key : {public_path} (give it to the operator)")
    return 0


def _job_key(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streaming_jobs.signing_key import JobSigningKey

    key = JobSigningKey.generate()
    try:
        private_path, public_path = key.save(Path(args.out))
    except FileExistsError:
        print(f"{Path(args.out) / 'fedstream-job.key'} exists already; not replacing the job's key", file=sys.stderr)
        return 1
    print(f"private key: {private_path} (the job's secret: FEDSTREAM_JOB_SIGNING_KEY_FILE or the secret scope)")
    print(f"public key : {public_path} (every client: FEDSTREAM_JOB_PUBLIC_KEY_FILE)")
    return 0


def _tables(args: argparse.Namespace) -> tuple[SparkSession, TableLocations]:
    from streaming_jobs.settings import JobSettings
    from streaming_jobs.spark_session import get_spark
    from streaming_jobs.tables import TableLocations

    settings = JobSettings.model_validate({"tables_root": args.tables_root} if args.tables_root else {})
    spark = get_spark("fedstream-clients")
    locations = TableLocations(settings.tables_root, settings.catalog_schema)
    locations.ensure(spark)
    return spark, locations


def _clients_enrol(args: argparse.Namespace) -> int:
    from streaming_jobs.client_registry import enrol_new_keys, public_keys_in

    keys = [key for path in args.paths for key in public_keys_in(path)]
    spark, locations = _tables(args)
    count = enrol_new_keys(spark, locations, keys)
    print(f"enrolled {count} new keys ({len(keys) - count} already enrolled)")
    return 0


def _clients_revoke(args: argparse.Namespace) -> int:
    from streaming_jobs.client_registry import revoke

    spark, locations = _tables(args)
    count = revoke(spark, locations, args.client_ids)
    print(f"revoked {count} clients; the job stops accepting their updates within twice its refresh interval")
    return 0


def _audit(args: argparse.Namespace) -> int:
    import json

    from streaming_jobs import audit

    spark, locations = _tables(args)
    result: object
    if args.question == "lineage":
        result = audit.lineage(spark, locations, args.model_name, args.version, args.as_of)
        rows = [
            {**{k: v for k, v in step.items() if k != "updates"}, "update": update}
            for step in result
            for update in (step["updates"] or [None])  # type: ignore[attr-defined]
        ]
    elif args.question == "verify":
        result = rows = audit.verify_chain(spark, locations, args.model_name, args.version, _verified)
    elif args.question == "client":
        result = audit.client_activity(spark, locations, args.client_id, args.as_of, model_name=args.model_name)
        rows = [{"status": status, **row} for status, entries in result.items() for row in entries]
    else:
        result = rows = audit.rejected_summary(spark, locations, args.as_of)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_table(rows)
    if args.question == "verify" and not all(row["ok"] for row in rows):
        return 1
    return 0


def _verified(row: dict[str, object], last: int) -> None:
    """Progress of ``audit verify`` on stderr (stdout keeps the table or the JSON): one line per version."""
    verdict = "ok" if row["ok"] else "MISMATCH"
    print(f"audit verify: version {row['version']} of {last} {verdict}", file=sys.stderr, flush=True)


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedstream.export import export_model, read_version_parameters

    spark, locations = _tables(args)
    try:
        parameters = read_version_parameters(spark, locations, args.model_name, args.version)
        path = export_model(parameters, args.architecture or args.model_name, args.format, Path(args.out))
    except (LookupError, ValueError, ImportError) as error:
        print(f"fedstream export: {error}", file=sys.stderr)
        return 2
    print(f"wrote version {args.version} of {args.model_name} as {args.format} to {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedstream.report import render_html
    from fedstream.report.read import read_report_data

    spark, locations = _tables(args)
    data = read_report_data(spark, locations, args.model_name)
    out = Path(args.out)
    out.write_text(render_html(data), encoding="utf-8")
    print(
        f"wrote {out}: {args.model_name}, {len(data.versions)} versions, {data.accepted_count} accepted updates, "
        f"{data.rejected_count} rejected messages, {len(data.clients)} clients"
    )
    return 0


def _print_table(rows: list[dict[str, object]]) -> None:
    if not rows:
        print("(nothing)")
        return
    flat = [{key: _cell(value) for key, value in row.items()} for row in rows]
    columns = list(flat[0])
    widths = {column: max(len(column), *(len(row.get(column, "")) for row in flat)) for column in columns}
    print("  ".join(column.ljust(widths[column]) for column in columns))
    for row in flat:
        print("  ".join(row.get(column, "").ljust(widths[column]) for column in columns))


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return " ".join(f"{key}={_cell(item)}" for key, item in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"
    return "" if value is None else str(value)


def _databricks_grants(args: argparse.Namespace) -> int:
    from streaming_jobs import databricks

    schema_name = databricks.catalog_schema(args.catalog, args.schema)
    if not args.job_principal and not args.auditors:
        print("give --job-principal, --auditors or both", file=sys.stderr)
        return 2
    if args.job_principal:
        print(f"-- the job's principal: run, create and own the tables and views in {schema_name}")
        print("\n".join(databricks.job_principal_grants(schema_name, args.job_principal, args.volume)))
    if args.auditors:
        print(f"-- auditors: read the views without blobs in {schema_name}; no table, no volume, no Kafka")
        print("\n".join(databricks.auditor_grants(schema_name, args.auditors)))
        if args.warehouse_id:
            command = databricks.warehouse_permission_command(args.warehouse_id, args.auditors)
            print(f"-- and CAN USE on the SQL warehouse, from a shell (no SQL statement grants it):\n-- {command}")
    return 0


def _add_table_arguments(demo: argparse.ArgumentParser) -> None:
    table = demo.add_argument_group("your own table", "train on a Parquet/CSV table's subjects instead of UCI HAPT's")
    table.add_argument("--table", help="a .parquet, .pq or .csv file: one client per subject")
    table.add_argument("--subject-column", help="the column naming each row's subject (one client each)")
    table.add_argument("--label-column", help="the column of the class to learn")
    table.add_argument("--feature-columns", help="comma-separated (default: every other column)")
    table.add_argument("--held-out-subjects", help="comma-separated subjects kept out of training (default: a fifth)")
    table.add_argument("--order-column", help="sensor samples: the column ordering each subject's rows")
    table.add_argument("--window", type=int, help="sensor samples: rows per window (with --order-column)")
    table.add_argument("--step", type=int, help="sensor samples: rows between window starts (default: --window)")
    table.add_argument(
        "--sequence-column", help="sensor samples: the recording a row belongs to, where the order restarts in each"
    )


def _table_source(args: argparse.Namespace) -> TableSource | None:
    """The ``--table`` options as a :class:`fedstream.demo_data.TableSource`; None without ``--table``.

    Raises ValueError naming the option that is missing or out of place.
    """
    from pathlib import Path

    from fedstream.demo_data import TableSource

    def names(text: str | None) -> tuple[str, ...] | None:
        return None if text is None else tuple(name.strip() for name in text.split(",") if name.strip())

    given = [f"--{name.replace('_', '-')}" for name in _TABLE_OPTIONS if getattr(args, name) is not None]
    if args.table is None:
        if given:
            raise ValueError(f"{', '.join(given)} need --table")
        return None
    needed = [
        f"--{name}" for name in ("subject-column", "label-column") if getattr(args, name.replace("-", "_")) is None
    ]
    if needed:
        raise ValueError(f"--table needs {' and '.join(needed)}")
    if (args.window is None) != (args.order_column is None):
        raise ValueError("--order-column and --window go together: cut the rows into windows in that order")
    if args.window is None and (args.step is not None or args.sequence_column is not None):
        raise ValueError("--step and --sequence-column need --order-column and --window")
    return TableSource(
        path=Path(args.table),
        subject_column=args.subject_column,
        label_column=args.label_column,
        feature_columns=names(args.feature_columns),
        order_column=args.order_column,
        window=args.window,
        step=args.step,
        sequence_column=args.sequence_column,
        held_out_subjects=names(args.held_out_subjects),
    )


_TABLE_OPTIONS = (
    "subject_column",
    "label_column",
    "feature_columns",
    "held_out_subjects",
    "order_column",
    "window",
    "step",
    "sequence_column",
)


def _demo(args: argparse.Namespace) -> int:
    from fedstream.demo import (
        DEMO_FINE_TUNING_EPOCHS,
        HAPT_SUBJECTS,
        DemoSettings,
        private_aggregation,
        run_demo,
        synchronous_aggregation,
    )
    from fedstream.demo_data import load_table_data

    settings = DemoSettings(duration_seconds=60 * args.minutes, seed=args.seed)
    data = None
    try:  # a bad table is refused here, before the stack or the job starts
        source = _table_source(args)
        if source is not None:
            data = load_table_data(source, args.seed)
            settings = dataclasses.replace(settings, table=source)
    except (ValueError, FileNotFoundError) as error:  # a TableFormatError, or a file pandas cannot parse
        print(f"fedstream demo: {error}", file=sys.stderr)
        return 2
    if args.buffer_size is not None:
        settings = dataclasses.replace(settings, aggregation={**settings.aggregation, "buffer_size": args.buffer_size})
    if args.aggregate_bursts:
        settings = dataclasses.replace(settings, aggregation={**settings.aggregation, "aggregate_bursts": True})
    if args.personalize is not None:
        from producers.personalization import HAR_CNN_HEAD  # HarCnn's head; the table MLP's too

        settings = dataclasses.replace(
            settings,
            personal_prefixes=HAR_CNN_HEAD if args.personalize in ("head", "both") else (),
            fine_tuning_epochs=DEMO_FINE_TUNING_EPOCHS if args.personalize in ("fine-tune", "both") else 0,
        )
    if args.mode == "fedavg":
        if args.dp_noise_multiplier is not None or args.aggregate_bursts:
            message = "fedstream demo: --mode fedavg runs without --dp-noise-multiplier and --aggregate-bursts"
            print(message, file=sys.stderr)
            return 2
        devices = HAPT_SUBJECTS - len(settings.held_out_subjects) if data is None else len(data.training)
        settings = dataclasses.replace(settings, aggregation=synchronous_aggregation(settings, devices))
    if args.dp_noise_multiplier is not None:
        population = None if data is None else len(data.training)
        aggregation = private_aggregation(settings, args.dp_noise_multiplier, args.dp_clip_norm, population)
        settings = dataclasses.replace(settings, aggregation=aggregation)
    return run_demo(settings, data)


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    from streaming_jobs.intake_limits import DEFAULT_BATCH_BYTES_BUDGET

    parser.add_argument("--model-name", default="har-cnn")
    parser.add_argument("--initial-model", help="safetensors file of version 0 (used once, when no version exists)")
    parser.add_argument("--tables-root", help="folder of the Delta tables (default: <state>/tables)")
    parser.add_argument("--checkpoint", help="streaming checkpoint folder (default: <state>/checkpoints/...)")
    parser.add_argument("--status-file", help="write progress as JSON here after every micro-batch")
    parser.add_argument("--aggregation", default="{}", help="aggregation settings as JSON (AggregationConfig fields)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=500)
    parser.add_argument(
        "--writer-id",
        default="fedstream-aggregation-job",
        help="Delta txnAppId prefix of this deployment's writes (one per deployment sharing no tables)",
    )
    parser.add_argument(
        "--batch-bytes-budget",
        type=int,
        default=DEFAULT_BATCH_BYTES_BUDGET,
        help="most message bytes one micro-batch brings into the driver (lowers --max-offsets-per-trigger)",
    )
    parser.add_argument("--trigger-seconds", type=float, default=0.5)
    parser.add_argument(
        "--audit-window-days",
        type=int,
        default=90,
        help="days of Delta history the tables keep, so `fedstream audit --as-of` reaches that far back (at least 7)",
    )
    parser.add_argument("--register-every", type=int, default=10)
    parser.add_argument("--experiment", default="fedstream", help="MLflow experiment name")
    parser.add_argument("--model-architecture", help="architecture name: register servable MLflow models (torch)")
    parser.add_argument("--enrol-public-keys", help="folder of <client_id>.pub files to enrol at start")
    parser.add_argument(
        "--registry-refresh-seconds",
        type=float,
        default=10.0,
        help="how often client_keys is re-read; a revocation is in effect within twice this",
    )
    parser.add_argument(
        "--chunk-deadline-seconds",
        type=float,
        default=600.0,
        help="reject a chunked update as incomplete when its chunks have not all arrived this long after the first",
    )
    parser.add_argument(
        "--executor-aggregation-min-parameters",
        type=int,
        help="keep a model of at least this many parameters as shards and aggregate it on Spark's executors "
        "(chunked updates only); default: every model on the driver",
    )
    parser.add_argument(
        "--signing-key",
        help="PEM file of the key that signs global versions (default: FEDSTREAM_JOB_SIGNING_KEY[_FILE], the "
        "secret scope, else the local stack's key, made on first use)",
    )
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="accept updates without an enrolled signature (not for production)",
    )


def job_settings(args: argparse.Namespace) -> JobSettings:
    """The settings ``fedstream job`` runs with, from its parsed arguments (see :func:`parse_job_arguments`)."""
    import json

    from streaming_jobs.settings import JobSettings

    overrides = {
        "model_name": args.model_name,
        "initial_model_path": args.initial_model,
        "aggregation": json.loads(args.aggregation),
        "max_offsets_per_trigger": args.max_offsets_per_trigger,
        "batch_bytes_budget": args.batch_bytes_budget,
        "writer_id": args.writer_id,
        "trigger_interval_seconds": args.trigger_seconds,
        "audit_window_days": args.audit_window_days,
        "register_every": args.register_every,
        "mlflow_experiment": args.experiment,
        "model_architecture": args.model_architecture,
        "enrol_public_keys_dir": args.enrol_public_keys,
        "require_signatures": not args.allow_unsigned,
        "registry_refresh_seconds": args.registry_refresh_seconds,
        "chunk_deadline_seconds": args.chunk_deadline_seconds,
        "executor_aggregation_min_parameters": args.executor_aggregation_min_parameters,
    }
    if args.tables_root:
        overrides["tables_root"] = args.tables_root
    if args.checkpoint:
        overrides["checkpoint_location"] = args.checkpoint
    if args.signing_key:
        overrides.update(signing_key=None, signing_key_file=args.signing_key)
    return JobSettings.model_validate(overrides)


def parse_job_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """``fedstream job``'s arguments parsed as the command parses them (``argv`` without ``job``)."""
    return _parser().parse_args(["job", *argv])


def _job(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from streaming_jobs.initial_model import InvalidInitialModelError
    from streaming_jobs.job import run_job

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "py4j", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = job_settings(args)
    try:
        run_job(settings, status_file=Path(args.status_file) if args.status_file else None)
    except InvalidInitialModelError as error:
        print(f"fedstream job: {error}", file=sys.stderr)
        return 2
    return 0


def _topics(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from fedstream.cluster_topics import ensure_cluster_topics
    from schemas.kafka_diagnosis import KafkaUnreachableError
    from schemas.kafka_settings import KafkaSettings
    from schemas.topics import MODELS_TOPIC, UPDATES_TOPIC

    for name in ("replication_factor", "updates_partitions", "models_partitions", "max_message_bytes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"fedstream topics: --{name.replace('_', '-')} must be ≥ 1, got {value}", file=sys.stderr)
            return 2
    overrides = {} if args.max_message_bytes is None else {"max_message_bytes": args.max_message_bytes}
    try:
        settings = KafkaSettings.from_env(**overrides)
    except ValueError as error:
        print(f"fedstream topics: the FEDSTREAM_KAFKA_* settings are not usable: {error}", file=sys.stderr)
        return 2
    partitions = {UPDATES_TOPIC: args.updates_partitions, MODELS_TOPIC: args.models_partitions}
    try:
        outcome = ensure_cluster_topics(settings, replication_factor=args.replication_factor, partitions=partitions)
    except KafkaUnreachableError as error:  # names the cause and the settings
        print(f"fedstream topics: {error}", file=sys.stderr)
        return 1
    except KafkaError as error:
        print(
            f"fedstream topics: {settings.bootstrap_servers} ({settings.security_protocol}): "
            f"{type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return 1
    print(f"cluster {settings.bootstrap_servers} ({settings.security_protocol})")
    for name in outcome.created:
        print(f"created {name} ({partitions[name]} partitions, replication factor {args.replication_factor})")
    for name, differing in outcome.found.items():
        print(f"found   {name}" + "".join(f"\n  {key}: {change} (left as is)" for key, change in differing.items()))
    return 0


def _stack(args: argparse.Namespace) -> int:
    from devstack.local_stack import stack_down, stack_status, stack_up

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
