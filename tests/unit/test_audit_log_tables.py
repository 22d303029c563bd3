"""The tables as an append-only audit log: their properties, the auditor's views, and the grants printed for them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pyspark.sql.types import BinaryType

from fedstream import cli
from streaming_jobs import databricks
from streaming_jobs.settings import JobSettings
from streaming_jobs.tables import (
    ALL_TABLES,
    DEFAULT_AUDIT_WINDOW_DAYS,
    MINIMUM_AUDIT_WINDOW_DAYS,
    MODEL_VERSIONS,
    TableSpec,
    _column_definitions,
    table_properties,
)

ROOT = Path(__file__).resolve().parents[2]
TABLE_IDS = [table.name for table in ALL_TABLES]

WRITES_THAT_ARE_NOT_APPENDS = {
    "DELETE FROM": re.compile(r"\bDELETE\s+FROM\b", re.IGNORECASE),
    "UPDATE ... SET": re.compile(r"\bUPDATE\s+[\w.`{}]+\s+SET\b", re.IGNORECASE),
    "MERGE INTO": re.compile(r"\bMERGE\s+INTO\b", re.IGNORECASE),
    "INSERT OVERWRITE": re.compile(r"\bINSERT\s+OVERWRITE\b", re.IGNORECASE),
    "TRUNCATE": re.compile(r"\bTRUNCATE\s+TABLE\b", re.IGNORECASE),
    "overwrite mode": re.compile(r"""mode\(\s*["']overwrite"""),
    "replaceWhere / overwriteSchema": re.compile(r"replaceWhere|overwriteSchema"),
    "DeltaTable delete / update / merge": re.compile(r"DeltaTable\b[^\n]*\.(delete|update|merge)\("),
}


@pytest.mark.parametrize("table", ALL_TABLES, ids=TABLE_IDS)
def test_every_table_keeps_its_history_for_the_audit_window_and_is_append_only(table: TableSpec) -> None:
    properties = table_properties(table, 400)
    assert properties["delta.logRetentionDuration"] == "interval 400 days"
    assert properties["delta.deletedFileRetentionDuration"] == "interval 400 days"
    assert properties["delta.appendOnly"] == "true"
    assert properties["delta.checkpointInterval"] == "100", "a log written every second checkpoints every 100 commits"


@pytest.mark.parametrize("table", ALL_TABLES, ids=TABLE_IDS)
def test_statistics_are_kept_on_existing_columns_only_and_never_on_blobs(table: TableSpec) -> None:
    columns = {field.name: field for field in table.schema.fields}
    stats = table_properties(table, 400).get("delta.dataSkippingStatsColumns")
    named = stats.split(",") if stats else []
    assert named == list(table.stats_columns)
    assert all(name in columns and not isinstance(columns[name].dataType, BinaryType) for name in named)


def test_the_audit_window_is_checked_on_entry() -> None:
    assert (
        table_properties(MODEL_VERSIONS, MINIMUM_AUDIT_WINDOW_DAYS)["delta.logRetentionDuration"] == "interval 7 days"
    )
    with pytest.raises(ValueError, match=r"at least 7 .* got 6"):
        table_properties(MODEL_VERSIONS, 6)
    for wrong in ("30", 30.0, True, None):
        with pytest.raises(TypeError, match="must be an int"):
            table_properties(MODEL_VERSIONS, wrong)  # type: ignore[arg-type]


def test_the_job_setting_defaults_to_the_tables_window_and_refuses_less_than_delta_allows() -> None:
    assert JobSettings.model_validate({"catalog_schema": None}).audit_window_days == DEFAULT_AUDIT_WINDOW_DAYS
    with pytest.raises(ValueError, match="audit_window_days"):
        JobSettings.model_validate({"catalog_schema": None, "audit_window_days": 3})
    arguments = cli._parser().parse_args(["job", "--audit-window-days", "365"])
    assert arguments.audit_window_days == 365


def test_nothing_in_fedstream_deletes_updates_or_overwrites_a_table_row() -> None:
    """``delta.appendOnly`` would make any such write fail in production: none may exist outside the tests."""
    sources = [
        path
        for folder in ("fedstream", "streaming_jobs", "producers", "schemas", "aggregator", "devstack", "bench")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".py", ".sql"}
    ]
    assert len(sources) > 20
    found = [
        f"{path.relative_to(ROOT)}: {what}"
        for path in sources
        for what, pattern in WRITES_THAT_ARE_NOT_APPENDS.items()
        if pattern.search(path.read_text())
    ]
    assert not found, found


@pytest.mark.parametrize("table", ALL_TABLES, ids=TABLE_IDS)
def test_the_auditors_view_has_every_column_but_the_blobs(table: TableSpec) -> None:
    selected = table.audit_select()
    names = [re.search(r"`(\w+)`$", expression).group(1) for expression in selected]  # type: ignore[union-attr]
    blobs = [field.name for field in table.schema.fields if isinstance(field.dataType, BinaryType)]
    kept = [field.name for field in table.schema.fields if not isinstance(field.dataType, BinaryType)]
    assert blobs, f"{table.name} has no blob to leave out"
    assert not set(blobs) & set(names)
    assert names[: len(kept)] == kept
    assert not any(blob in expression for blob in ("payload`", "raw_value", "parameters`") for expression in selected)


def test_the_views_hide_the_dp_seed_and_show_a_key_fingerprint() -> None:
    (config,) = [expression for expression in MODEL_VERSIONS.audit_select() if expression.endswith("`config_json`")]
    assert "regexp_replace" in config and "dp_seed" in config
    keys = next(table for table in ALL_TABLES if table.name == "client_keys")
    assert "sha2(public_key, 256) AS `public_key_sha256`" in keys.audit_select()


def test_create_table_columns_keep_not_null() -> None:
    definitions = _column_definitions(MODEL_VERSIONS.schema)
    assert definitions.startswith("`model_name` string NOT NULL, `version` bigint NOT NULL, `parent_version` bigint,")
    assert "`update_ids` array<string> NOT NULL" in definitions


# ── grants ──────────────────────────────────────────────────────────────────────────────────────────────────────


def test_the_grants_name_every_auditors_view_and_nothing_else() -> None:
    assert tuple(table.name for table in ALL_TABLES) == databricks.AUDITED_TABLES
    statements = databricks.auditor_grants("fedstream.federated", "fedstream-auditors")
    assert statements[:2] == [
        "GRANT USE CATALOG ON CATALOG fedstream TO `fedstream-auditors`;",
        "GRANT USE SCHEMA ON SCHEMA fedstream.federated TO `fedstream-auditors`;",
    ]
    views = [re.search(r"ON VIEW (\S+) TO", statement).group(1) for statement in statements[2:]]  # type: ignore[union-attr]
    assert views == [f"fedstream.federated.{table.audit_view}" for table in ALL_TABLES]
    assert not any("TABLE" in statement or "VOLUME" in statement or "MODIFY" in statement for statement in statements)


def test_the_job_principal_gets_what_the_job_does() -> None:
    statements = databricks.job_principal_grants("fedstream.federated", "6f0c1b6e-0000-4000-8000-000000000000", "files")
    assert statements == [
        "GRANT USE CATALOG ON CATALOG fedstream TO `6f0c1b6e-0000-4000-8000-000000000000`;",
        "GRANT USE SCHEMA, CREATE TABLE, SELECT, MODIFY, CREATE MODEL ON SCHEMA fedstream.federated TO "
        "`6f0c1b6e-0000-4000-8000-000000000000`;",
        "GRANT READ VOLUME, WRITE VOLUME ON VOLUME fedstream.federated.files TO "
        "`6f0c1b6e-0000-4000-8000-000000000000`;",
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: databricks.auditor_grants("fedstream.federated", ""), "principal ''"),
        (lambda: databricks.auditor_grants("fedstream.federated", "a`; DROP"), "without backticks"),
        (lambda: databricks.auditor_grants("fed-stream.federated", "auditors"), "catalog 'fed-stream'"),
        (lambda: databricks.job_principal_grants("fedstream.federated", "sp", "my volume"), "volume 'my volume'"),
        (lambda: databricks.warehouse_permission_command("not-an-id", "auditors"), "16 hex digits"),
    ],
)
def test_bad_names_are_refused_with_the_value(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_the_grants_command_prints_sql_and_the_warehouse_command(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["databricks", "grants", "--catalog", "health", "--schema", "fl", "--job-principal", "sp-1"]
    arguments += ["--auditors", "auditors", "--warehouse-id", "0123456789abcdef"]
    assert cli.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "GRANT SELECT ON VIEW health.fl.updates_audit TO `auditors`;" in printed
    assert "GRANT READ VOLUME, WRITE VOLUME ON VOLUME health.fl.fedstream TO `sp-1`;" in printed
    assert (
        "databricks warehouses update-permissions 0123456789abcdef --json "
        """'{"access_control_list": [{"group_name": "auditors", "permission_level": "CAN_USE"}]}'"""
    ) in printed
    assert cli.main(["databricks", "grants"]) == 2
