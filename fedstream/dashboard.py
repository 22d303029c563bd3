"""The report's views as a Databricks AI/BI (Lakeview) dashboard: its datasets, widgets and JSON file.

``fedstream report`` draws the tables as one HTML page; on Databricks the bundle deploys the same views as a
dashboard over the Unity Catalog schema (``databricks.yml``, ``docs/databricks.md``). This module is the one
place that defines each dataset's SQL and each widget; ``dashboards/fedstream-training.lvdash.json`` is what
:func:`render` makes of them (``python -m fedstream.dashboard`` writes it, a test checks the two agree).

The datasets read the auditors' views (``<table>_audit``, :mod:`streaming_jobs.tables`), which have no blob
columns, by unqualified name: the bundle sets the dashboard's default catalog and schema. No dataset returns a
client id: clients appear by the pseudonym the report uses (:func:`fedstream.report.data.pseudonym`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedstream.report.data import PSEUDONYM_DIGITS

DASHBOARD_FILE = Path(__file__).resolve().parents[1] / "dashboards" / "fedstream-training.lvdash.json"
"""The serialized dashboard the bundle deploys (``resources.dashboards`` in ``databricks.yml``)."""
VERSIONS_VIEW = "model_versions_audit"
UPDATES_VIEW = "updates_audit"
REJECTED_VIEW = "rejected_updates_audit"
"""The auditors' views the datasets read: ``streaming_jobs.tables``' ``<table>.audit_view``."""

Scale = Literal["temporal", "quantitative", "categorical"]
Aggregate = Literal["SUM", "MAX"]


def pseudonym_sql(column: str) -> str:
    """SQL for :func:`fedstream.report.data.pseudonym` of ``column``: the first hex digits of its SHA-256."""
    return f"substr(sha2({column}, 256), 1, {PSEUDONYM_DIGITS})"


@dataclass(frozen=True)
class Dataset:
    """One query of the dashboard: its SQL and the columns it returns, which widgets may use."""

    name: str
    display_name: str
    sql: str
    columns: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The dataset as the serialized dashboard holds it (the query one line per string)."""
        return {"name": self.name, "displayName": self.display_name, "queryLines": self.sql.splitlines(keepends=True)}


@dataclass(frozen=True)
class Field:
    """A column of a dataset as a widget reads it: as it is, or aggregated over the widget's groups."""

    column: str
    aggregate: Aggregate | None = None

    @property
    def name(self) -> str:
        """The name the widget's encodings refer to: ``version``, or ``sum(messages)``."""
        return self.column if self.aggregate is None else f"{self.aggregate.lower()}({self.column})"

    @property
    def expression(self) -> str:
        """The widget query's expression over the dataset: ``` `version` ``` or ``SUM(`messages`)``."""
        quoted = f"`{self.column}`"
        return quoted if self.aggregate is None else f"{self.aggregate}({quoted})"


@dataclass(frozen=True)
class Axis:
    """One encoding of a chart (x, y or colour): a field, its scale and its label."""

    field: Field
    scale: Scale
    title: str

    def to_json(self) -> dict[str, Any]:
        """The encoding as the widget spec holds it."""
        return {"fieldName": self.field.name, "scale": {"type": self.scale}, "displayName": self.title}


@dataclass(frozen=True)
class Position:
    """Where a widget sits on the page's grid, six columns wide."""

    x: int
    y: int
    width: int
    height: int

    def to_json(self) -> dict[str, int]:
        """The position as the page layout holds it."""
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


def _query(name: str, dataset: Dataset, fields: Sequence[Field], *, distinct: bool = False) -> dict[str, Any]:
    """A widget's query: ``fields`` of ``dataset``, grouped by the unaggregated ones when one is aggregated.

    Without an aggregate the rows come as they are (``disaggregated``), unless ``distinct`` asks for each
    combination of values once (a filter's choices).
    """
    return {
        "name": name,
        "query": {
            "datasetName": dataset.name,
            "fields": [{"name": field.name, "expression": field.expression} for field in fields],
            "disaggregated": not distinct and all(field.aggregate is None for field in fields),
        },
    }


def _frame(title: str, description: str | None) -> dict[str, Any]:
    frame: dict[str, Any] = {"showTitle": True, "title": title}
    if description:
        frame.update(showDescription=True, description=description)
    return frame


@dataclass(frozen=True)
class Chart:
    """A line or bar chart of one dataset; rows are drawn as they are unless a field is aggregated."""

    name: str
    title: str
    dataset: Dataset
    kind: Literal["line", "bar"]
    x: Axis
    y: Axis
    position: Position
    color: Axis | None = None
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The chart as a page layout entry."""
        axes = {"x": self.x, "y": self.y} | ({"color": self.color} if self.color else {})
        spec = {
            "version": 3,
            "widgetType": self.kind,
            "encodings": {channel: axis.to_json() for channel, axis in axes.items()},
            "frame": _frame(self.title, self.description),
        }
        fields = [axis.field for axis in axes.values()]
        widget = {"name": self.name, "queries": [_query("main_query", self.dataset, fields)], "spec": spec}
        return {"widget": widget, "position": self.position.to_json()}


@dataclass(frozen=True)
class Counter:
    """One number: an aggregate of a column over the whole (filtered) dataset."""

    name: str
    title: str
    dataset: Dataset
    value: Field
    position: Position

    def to_json(self) -> dict[str, Any]:
        """The counter as a page layout entry."""
        spec = {
            "version": 2,
            "widgetType": "counter",
            "encodings": {"value": {"fieldName": self.value.name, "displayName": self.title}},
            "frame": _frame(self.title, None),
        }
        widget = {"name": self.name, "queries": [_query("main_query", self.dataset, [self.value])], "spec": spec}
        return {"widget": widget, "position": self.position.to_json()}


@dataclass(frozen=True)
class Table:
    """The dataset's rows, with the listed columns under their titles."""

    name: str
    title: str
    dataset: Dataset
    columns: tuple[tuple[str, str], ...]
    """``(column, title)`` pairs, in display order."""
    position: Position
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The table as a page layout entry."""
        fields = [Field(column) for column, _ in self.columns]
        columns = [{"fieldName": column, "displayName": title} for column, title in self.columns]
        spec = {
            "version": 2,
            "widgetType": "table",
            "encodings": {"columns": columns},
            "frame": _frame(self.title, self.description),
        }
        widget = {"name": self.name, "queries": [_query("main_query", self.dataset, fields)], "spec": spec}
        return {"widget": widget, "position": self.position.to_json()}


@dataclass(frozen=True)
class ModelFilter:
    """A choice of models that filters every listed dataset on its ``model_name`` (all models when none chosen)."""

    name: str
    datasets: tuple[Dataset, ...]
    position: Position

    def to_json(self) -> dict[str, Any]:
        """The filter as a page layout entry: one query per dataset it filters."""
        field = Field("model_name")
        queries = [
            _query(f"model_name_of_{dataset.name}", dataset, [field], distinct=True) for dataset in self.datasets
        ]
        spec = {
            "version": 2,
            "widgetType": "filter-multi-select",
            "encodings": {
                "fields": [
                    {"fieldName": field.name, "displayName": "Model", "queryName": query["name"]} for query in queries
                ]
            },
            "frame": _frame("Model", None),
        }
        return {"widget": {"name": self.name, "queries": queries, "spec": spec}, "position": self.position.to_json()}


Widget = Chart | Counter | Table | ModelFilter


# ── datasets ─────────────────────────────────────────────────────────────────────────────────────────────────────

VERSIONS = Dataset(
    "versions",
    "Global versions",
    f"""SELECT
  model_name,
  version,
  created_at,
  size(update_staleness) AS updates_aggregated,
  staleness_mean,
  federated_validation_accuracy,
  federated_validation_loss
FROM {VERSIONS_VIEW}""",
    (
        "model_name",
        "version",
        "created_at",
        "updates_aggregated",
        "staleness_mean",
        "federated_validation_accuracy",
        "federated_validation_loss",
    ),
)
PRIVACY = Dataset(
    "privacy",
    "Differential privacy per version",
    f"""SELECT model_name, version, created_at, epsilon, epsilon_assumption, privacy_budget_exhausted
FROM {VERSIONS_VIEW}
WHERE epsilon IS NOT NULL""",
    ("model_name", "version", "created_at", "epsilon", "epsilon_assumption", "privacy_budget_exhausted"),
)
STALENESS = Dataset(
    "staleness",
    "Staleness of aggregated updates",
    f"""SELECT model_name, staleness, count(*) AS updates
FROM (SELECT model_name, explode(update_staleness) AS staleness FROM {VERSIONS_VIEW}) AS aggregated
GROUP BY model_name, staleness""",
    ("model_name", "staleness", "updates"),
)
ACTIVITY = Dataset(
    "activity",
    "Messages per hour, accepted and rejected by reason",
    f"""SELECT model_name, date_trunc('HOUR', received_at) AS hour, 'accepted' AS outcome, count(*) AS messages
FROM {UPDATES_VIEW}
GROUP BY model_name, date_trunc('HOUR', received_at)
UNION ALL
SELECT job_model AS model_name, date_trunc('HOUR', rejected_at) AS hour, concat('rejected: ', reason) AS outcome,
  count(*) AS messages
FROM {REJECTED_VIEW}
GROUP BY job_model, date_trunc('HOUR', rejected_at), reason""",
    ("model_name", "hour", "outcome", "messages"),
)
REJECTIONS = Dataset(
    "rejections",
    "Rejected messages by reason",
    f"""SELECT job_model AS model_name, reason, count(*) AS messages, count(DISTINCT client_id) AS clients,
  max(rejected_at) AS latest_at
FROM {REJECTED_VIEW}
GROUP BY job_model, reason""",
    ("model_name", "reason", "messages", "clients", "latest_at"),
)
CLIENTS = Dataset(
    "clients",
    "Contributions per client (pseudonymous)",
    f"""WITH placed AS (
  SELECT DISTINCT model_name, update_id
  FROM (SELECT model_name, explode(update_ids) AS update_id FROM {VERSIONS_VIEW}) AS aggregated
),
accepted_by_client AS (
  SELECT u.model_name, {pseudonym_sql("u.client_id")} AS client_pseudonym, count(*) AS accepted,
    count(p.update_id) AS in_versions, sum(u.sample_count) AS samples
  FROM {UPDATES_VIEW} AS u
  LEFT JOIN placed AS p ON p.model_name = u.model_name AND p.update_id = u.update_id
  GROUP BY u.model_name, {pseudonym_sql("u.client_id")}
),
rejected_by_client AS (
  SELECT job_model AS model_name, {pseudonym_sql("client_id")} AS client_pseudonym, count(*) AS rejected
  FROM {REJECTED_VIEW}
  WHERE client_id IS NOT NULL
  GROUP BY job_model, {pseudonym_sql("client_id")}
)
SELECT model_name, client_pseudonym, coalesce(accepted, 0) AS accepted, coalesce(in_versions, 0) AS in_versions,
  coalesce(rejected, 0) AS rejected, coalesce(samples, 0) AS samples
FROM accepted_by_client FULL OUTER JOIN rejected_by_client USING (model_name, client_pseudonym)""",
    ("model_name", "client_pseudonym", "accepted", "in_versions", "rejected", "samples"),
)
DATASETS = (VERSIONS, PRIVACY, STALENESS, ACTIVITY, REJECTIONS, CLIENTS)
"""Every dataset of the dashboard, in the order the file lists them."""

# ── the page ─────────────────────────────────────────────────────────────────────────────────────────────────────

_MODEL = Axis(Field("model_name"), "categorical", "Model")
_VERSION = Axis(Field("version"), "quantitative", "Version")

WIDGETS: tuple[Widget, ...] = (
    ModelFilter("model_filter", DATASETS, Position(0, 0, 2, 2)),
    Counter("latest_version", "Latest version", VERSIONS, Field("version", "MAX"), Position(2, 0, 1, 2)),
    Counter("accepted_updates", "Updates accepted", CLIENTS, Field("accepted", "SUM"), Position(3, 0, 1, 2)),
    Counter("updates_in_versions", "Updates in a version", CLIENTS, Field("in_versions", "SUM"), Position(4, 0, 1, 2)),
    Counter("rejected_messages", "Messages rejected", REJECTIONS, Field("messages", "SUM"), Position(5, 0, 1, 2)),
    Chart(
        "versions_over_time",
        "Global versions over time",
        VERSIONS,
        "line",
        Axis(Field("created_at"), "temporal", "Created"),
        _VERSION,
        Position(0, 2, 3, 6),
        color=_MODEL,
    ),
    Chart(
        "accuracy_per_version",
        "Federated validation accuracy per version",
        VERSIONS,
        "line",
        _VERSION,
        Axis(Field("federated_validation_accuracy"), "quantitative", "Accuracy"),
        Position(3, 2, 3, 6),
        color=_MODEL,
        description="Weighted by the clients' validation examples; empty until clients report validation results.",
    ),
    Chart(
        "messages_over_time",
        "Updates accepted and messages rejected, by reason, per hour",
        ACTIVITY,
        "bar",
        Axis(Field("hour"), "temporal", "Hour"),
        Axis(Field("messages", "SUM"), "quantitative", "Messages"),
        Position(0, 8, 6, 6),
        color=Axis(Field("outcome"), "categorical", "Outcome"),
        description="Rejected messages count for the model whose job rejected them.",
    ),
    Chart(
        "staleness_distribution",
        "Staleness of the updates aggregated into versions",
        STALENESS,
        "bar",
        Axis(Field("staleness"), "quantitative", "Staleness (versions behind)"),
        Axis(Field("updates", "SUM"), "quantitative", "Updates"),
        Position(0, 14, 3, 6),
    ),
    Chart(
        "epsilon_per_version",
        "Privacy spent: ε per version",
        PRIVACY,
        "line",
        _VERSION,
        Axis(Field("epsilon"), "quantitative", "ε"),
        Position(3, 14, 3, 6),
        color=_MODEL,
        description="Only versions made with differential privacy; empty when it is off.",
    ),
    Table(
        "rejections_by_reason",
        "Rejected messages by reason",
        REJECTIONS,
        (
            ("model_name", "Model"),
            ("reason", "Reason"),
            ("messages", "Messages"),
            ("clients", "Clients"),
            ("latest_at", "Latest"),
        ),
        Position(0, 20, 3, 8),
    ),
    Table(
        "contributions_per_client",
        "Contributions per client",
        CLIENTS,
        (
            ("model_name", "Model"),
            ("client_pseudonym", "Client (pseudonym)"),
            ("accepted", "Accepted"),
            ("in_versions", "In a version"),
            ("rejected", "Rejected"),
            ("samples", "Samples"),
        ),
        Position(3, 20, 3, 8),
        description=(
            f"A client is shown by the first {PSEUDONYM_DIGITS} hex digits of the SHA-256 of its id, as in "
            "`fedstream report`: printf %s ID | sha256sum finds a known client."
        ),
    ),
)
"""Every widget of the dashboard's one page, top to bottom."""


def dashboard() -> dict[str, Any]:
    """The serialized dashboard: its datasets and its one page."""
    return {
        "datasets": [dataset.to_json() for dataset in DATASETS],
        "pages": [
            {
                "name": "training",
                "displayName": "Federated training",
                "layout": [widget.to_json() for widget in WIDGETS],
                "pageType": "PAGE_TYPE_CANVAS",
            }
        ],
    }


def render() -> str:
    """The dashboard file's text: indented JSON with a final newline, stable from run to run."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write :data:`DASHBOARD_FILE` (or, with ``--check``, exit 1 when it differs from :func:`render`)."""
    parser = argparse.ArgumentParser(prog="python -m fedstream.dashboard", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="only compare the committed file with the module")
    arguments = parser.parse_args(argv)
    text = render()
    if arguments.check:
        current = DASHBOARD_FILE.read_text(encoding="utf-8") if DASHBOARD_FILE.exists() else None
        if current != text:
            print(f"{DASHBOARD_FILE} differs from fedstream.dashboard; run python -m fedstream.dashboard")
            return 1
        return 0
    DASHBOARD_FILE.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {DASHBOARD_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
