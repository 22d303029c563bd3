"""What the report shows, computed from plain rows: pure Python, no Spark, no HTML.

The rows are the tables' rows as mappings (what :mod:`fedstream.report.read` collects) or the pydantic rows of
:mod:`schemas.rows`; only the columns named in ``VERSION_COLUMNS``, ``UPDATE_COLUMNS`` and ``REJECTED_COLUMNS``
are read, so the blobs (parameters, payloads, raw bytes) are never needed. Client ids may be ePHI: the summary
holds only their pseudonyms (:func:`pseudonym`), and rejection details have every known client id replaced by
its pseudonym.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

Row = Mapping[str, Any] | BaseModel
"""One table row: a mapping of column names to values, or a pydantic row of ``schemas.rows``."""

VERSION_COLUMNS = (
    "model_name",
    "version",
    "created_at",
    "update_ids",
    "update_staleness",
    "epsilon",
    "epsilon_assumption",
    "privacy_budget_exhausted",
    "federated_validation_accuracy",
)
"""The ``model_versions`` columns the report reads (never ``parameters`` or ``optimizer_state``)."""
UPDATE_COLUMNS = ("model_name", "update_id", "client_id", "sample_count", "received_at")
"""The ``updates`` columns the report reads (never ``payload`` or ``signature``)."""
REJECTED_COLUMNS = ("reason", "detail", "client_id", "rejected_at")
"""The ``rejected_updates`` columns the report reads (never ``raw_value`` or ``key``)."""

PSEUDONYM_DIGITS = 12
"""Hex digits of SHA-256 kept in a client's pseudonym: collisions are unlikely below about ten million clients."""
MAX_TIME_BUCKETS = 60
"""Most bars on the activity-over-time chart: the bucket size grows until the time span fits."""
BUCKET_SIZES_SECONDS = (10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
"""Bucket sizes tried in order, smallest first; a span too long for the largest gets whole weeks."""
MAX_STALENESS_BINS = 40
"""Most bars on the staleness histogram: larger stalenesses are binned in ranges of equal width."""
MAX_DETAIL_CHARACTERS = 300
"""Longest example rejection detail kept (with an ellipsis when cut)."""


def pseudonym(client_id: str) -> str:
    """A short stable pseudonym of ``client_id``: the first :data:`PSEUDONYM_DIGITS` hex digits of its SHA-256.

    The same id gives the same pseudonym in every report, so an auditor who has an id can find it
    (``printf %s ID | sha256sum``); the hash has no key, so whoever can guess an id can confirm the guess too.
    """
    if not isinstance(client_id, str):
        raise TypeError(f"client_id must be a str, got {client_id!r} ({type(client_id).__name__})")
    return hashlib.sha256(client_id.encode()).hexdigest()[:PSEUDONYM_DIGITS]


@dataclass(frozen=True)
class VersionPoint:
    """One global version: when it was made, from how many updates, and its ε and accuracy if recorded."""

    version: int
    created_at: datetime
    update_count: int
    epsilon: float | None
    accuracy: float | None


@dataclass(frozen=True)
class StalenessBin:
    """Accepted updates aggregated with a staleness from ``low`` to ``high`` (inclusive)."""

    low: int
    high: int
    count: int

    @property
    def label(self) -> str:
        """``3`` for a bin of one staleness, ``40-79`` for a range."""
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True)
class TimeBucket:
    """Messages in ``[start, start + bucket size)``: updates accepted, and rejected ones by reason."""

    start: datetime
    accepted: int
    rejected: Mapping[str, int]


@dataclass(frozen=True)
class ClientContribution:
    """One client, by pseudonym: its accepted updates, how many of them are in a version, its rejected messages."""

    pseudonym: str
    accepted: int
    in_versions: int
    rejected: int
    samples: int


@dataclass(frozen=True)
class ReasonSummary:
    """One rejection reason: how many messages, from how many clients, and its latest detail (pseudonymised)."""

    reason: str
    count: int
    clients: int
    latest_detail: str
    latest_at: datetime


@dataclass(frozen=True)
class ReportData:
    """Everything the report page shows, already summarised: no client id, no blob."""

    model_name: str
    generated_at: datetime
    source: str | None
    versions: tuple[VersionPoint, ...]
    accepted_count: int
    in_version_count: int
    rejected_count: int
    unidentified_rejected_count: int
    first_at: datetime | None
    last_at: datetime | None
    staleness_bins: tuple[StalenessBin, ...]
    bucket_seconds: int
    buckets: tuple[TimeBucket, ...]
    reasons: tuple[ReasonSummary, ...]
    clients: tuple[ClientContribution, ...]
    epsilon_assumption: str | None
    privacy_budget_exhausted: bool

    @property
    def dp_enabled(self) -> bool:
        """True when any version carries ε (differential privacy was on for it)."""
        return any(point.epsilon is not None for point in self.versions)

    @property
    def has_accuracy(self) -> bool:
        """True when any version carries a federated validation accuracy."""
        return any(point.accuracy is not None for point in self.versions)

    @property
    def latest_version(self) -> int | None:
        """The highest version number, or None without versions."""
        return max((point.version for point in self.versions), default=None)

    @property
    def reason_names(self) -> tuple[str, ...]:
        """Rejection reasons, the most frequent first (ties by name): the order of the chart's series."""
        return tuple(summary.reason for summary in self.reasons)


def summarize(
    model_name: str,
    versions: Iterable[Row],
    updates: Iterable[Row],
    rejected: Iterable[Row],
    *,
    generated_at: datetime | None = None,
    source: str | None = None,
    bucket_seconds: int | None = None,
) -> ReportData:
    """The report of ``model_name`` from its ``model_versions``, ``updates`` and ``rejected_updates`` rows.

    Rows that carry a ``model_name`` of another model are left out; rejected messages carry no trusted model
    name (they may not even parse), so every one counts. Timestamps must be timezone-aware. ``bucket_seconds``
    fixes the activity chart's bucket size; by default it is the smallest of :data:`BUCKET_SIZES_SECONDS` that
    keeps the chart within :data:`MAX_TIME_BUCKETS` bars.
    """
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a non-empty str, got {model_name!r}")
    if bucket_seconds is not None and (
        isinstance(bucket_seconds, bool) or not isinstance(bucket_seconds, int) or bucket_seconds < 1
    ):
        raise ValueError(f"bucket_seconds must be a positive int, got {bucket_seconds!r}")
    version_rows = [_fields(row, VERSION_COLUMNS, "model_versions") for row in versions]
    update_rows = [_fields(row, UPDATE_COLUMNS, "updates") for row in updates]
    rejected_rows = [_fields(row, REJECTED_COLUMNS, "rejected_updates") for row in rejected]
    version_rows = [row for row in version_rows if row.get("model_name", model_name) == model_name]
    update_rows = [row for row in update_rows if row.get("model_name", model_name) == model_name]
    version_rows.sort(key=lambda row: int(row["version"]))

    points = tuple(
        VersionPoint(
            version=int(row["version"]),
            created_at=_aware(row["created_at"], "model_versions.created_at"),
            update_count=len(row["update_staleness"] or ()),
            epsilon=_optional_float(row.get("epsilon")),
            accuracy=_optional_float(row.get("federated_validation_accuracy")),
        )
        for row in version_rows
    )
    accepted_times = [_aware(row["received_at"], "updates.received_at") for row in update_rows]
    rejected_times = [_aware(row["rejected_at"], "rejected_updates.rejected_at") for row in rejected_rows]
    moments = [point.created_at for point in points] + accepted_times + rejected_times
    first_at, last_at = (min(moments), max(moments)) if moments else (None, None)

    placed = {update_id for row in version_rows for update_id in (row.get("update_ids") or ())}
    staleness = [int(value) for row in version_rows for value in (row["update_staleness"] or ())]
    activity_times = accepted_times + rejected_times
    if bucket_seconds is None:
        bucket_seconds = automatic_bucket_seconds(min(activity_times), max(activity_times)) if activity_times else 60
    known_ids = {row["client_id"] for row in update_rows} | {
        row["client_id"] for row in rejected_rows if row.get("client_id") is not None
    }
    last_dp = next((row for row in reversed(version_rows) if row.get("epsilon") is not None), None)
    return ReportData(
        model_name=model_name,
        generated_at=_aware(generated_at or datetime.now(UTC), "generated_at"),
        source=source,
        versions=points,
        accepted_count=len(update_rows),
        in_version_count=sum(1 for row in update_rows if row["update_id"] in placed),
        rejected_count=len(rejected_rows),
        unidentified_rejected_count=sum(1 for row in rejected_rows if row.get("client_id") is None),
        first_at=first_at,
        last_at=last_at,
        staleness_bins=staleness_histogram(staleness),
        bucket_seconds=bucket_seconds,
        buckets=_time_buckets(
            accepted_times,
            [(str(row["reason"]), at) for row, at in zip(rejected_rows, rejected_times, strict=True)],
            bucket_seconds,
        ),
        reasons=_reasons(rejected_rows, rejected_times, known_ids),
        clients=_clients(update_rows, rejected_rows, placed),
        epsilon_assumption=None if last_dp is None else last_dp.get("epsilon_assumption"),
        privacy_budget_exhausted=any(row.get("privacy_budget_exhausted") for row in version_rows),
    )


def staleness_histogram(stalenesses: Iterable[int]) -> tuple[StalenessBin, ...]:
    """Counts of each staleness from 0 to the largest, in at most :data:`MAX_STALENESS_BINS` bins of equal width."""
    counts = Counter(stalenesses)
    if not counts:
        return ()
    negative = [value for value in counts if value < 0]
    if negative:
        raise ValueError(f"stalenesses must be non-negative, got {sorted(negative)[:5]}")
    width = math.ceil((max(counts) + 1) / MAX_STALENESS_BINS)
    return tuple(
        StalenessBin(low, low + width - 1, sum(counts.get(value, 0) for value in range(low, low + width)))
        for low in range(0, max(counts) + 1, width)
    )


def automatic_bucket_seconds(first: datetime, last: datetime) -> int:
    """The smallest of :data:`BUCKET_SIZES_SECONDS` that covers ``first`` to ``last`` in :data:`MAX_TIME_BUCKETS`."""
    for size in BUCKET_SIZES_SECONDS:
        if _bucket_count(first, last, size) <= MAX_TIME_BUCKETS:
            return size
    week = BUCKET_SIZES_SECONDS[-1]
    weeks = math.ceil((last - first).total_seconds() / week / MAX_TIME_BUCKETS) + 1
    return weeks * week


def _bucket_count(first: datetime, last: datetime, size: int) -> int:
    return _bucket_index(last, size) - _bucket_index(first, size) + 1


def _bucket_index(moment: datetime, size: int) -> int:
    """Buckets are aligned on multiples of ``size`` seconds since the Unix epoch (so on whole minutes, hours, ...)."""
    return math.floor(moment.timestamp() / size)


def _time_buckets(accepted: list[datetime], rejected: list[tuple[str, datetime]], size: int) -> tuple[TimeBucket, ...]:
    """Every bucket from the first message's to the last's, empty ones included, so time runs evenly."""
    moments = accepted + [at for _, at in rejected]
    if not moments:
        return ()
    first, last = _bucket_index(min(moments), size), _bucket_index(max(moments), size)
    if last - first + 1 > 100 * MAX_TIME_BUCKETS:
        raise ValueError(f"bucket_seconds={size} makes {last - first + 1} buckets; choose a larger bucket")
    accepted_counts = Counter(_bucket_index(at, size) for at in accepted)
    rejected_counts: dict[int, Counter[str]] = {}
    for reason, at in rejected:
        rejected_counts.setdefault(_bucket_index(at, size), Counter())[reason] += 1
    return tuple(
        TimeBucket(
            start=datetime.fromtimestamp(index * size, UTC),
            accepted=accepted_counts.get(index, 0),
            rejected=dict(sorted(rejected_counts.get(index, Counter()).items())),
        )
        for index in range(first, last + 1)
    )


def _reasons(rows: list[dict[str, Any]], times: list[datetime], known_ids: set[str]) -> tuple[ReasonSummary, ...]:
    """Per reason: count, distinct clients and the latest detail with client ids replaced by pseudonyms."""
    redact = _redactor(known_ids)
    grouped: dict[str, list[tuple[datetime, dict[str, Any]]]] = {}
    for row, at in zip(rows, times, strict=True):
        grouped.setdefault(str(row["reason"]), []).append((at, row))
    summaries = []
    for reason, entries in grouped.items():
        latest_at, latest = max(entries, key=lambda entry: entry[0])
        detail = redact(str(latest.get("detail") or ""))
        if len(detail) > MAX_DETAIL_CHARACTERS:
            detail = detail[: MAX_DETAIL_CHARACTERS - 1] + "…"
        clients = {row["client_id"] for _, row in entries if row.get("client_id") is not None}
        summaries.append(ReasonSummary(reason, len(entries), len(clients), detail, latest_at))
    return tuple(sorted(summaries, key=lambda summary: (-summary.count, summary.reason)))


def _redactor(known_ids: set[str]) -> Callable[[str], str]:
    """A function that replaces every id of ``known_ids`` in a text by its pseudonym, the longest ids first."""
    ids = sorted((each for each in known_ids if each), key=len, reverse=True)
    if not ids:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(each) for each in ids))
    return lambda text: pattern.sub(lambda match: f"[client {pseudonym(match.group(0))}]", text)


def _clients(
    updates: list[dict[str, Any]], rejected: list[dict[str, Any]], placed: set[str]
) -> tuple[ClientContribution, ...]:
    """Every client with an accepted or rejected message, the most active first (ties by pseudonym)."""
    accepted: Counter[str] = Counter()
    in_versions: Counter[str] = Counter()
    samples: Counter[str] = Counter()
    for row in updates:
        client = str(row["client_id"])
        accepted[client] += 1
        samples[client] += int(row.get("sample_count") or 0)
        if row["update_id"] in placed:
            in_versions[client] += 1
    refused = Counter(str(row["client_id"]) for row in rejected if row.get("client_id") is not None)
    contributions = [
        ClientContribution(pseudonym(client), accepted[client], in_versions[client], refused[client], samples[client])
        for client in set(accepted) | set(refused)
    ]
    return tuple(sorted(contributions, key=lambda each: (-(each.accepted + each.rejected), each.pseudonym)))


def _fields(row: Row, columns: tuple[str, ...], table: str) -> dict[str, Any]:
    """The ``columns`` of ``row`` that it has, as a dict; a TypeError for anything that is not a row."""
    if isinstance(row, BaseModel):
        return {column: getattr(row, column) for column in columns if hasattr(row, column)}
    if isinstance(row, Mapping):
        return {column: row[column] for column in columns if column in row}
    raise TypeError(f"a {table} row must be a mapping or a pydantic row, got {row!r} ({type(row).__name__})")


def _aware(moment: object, name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise TypeError(f"{name} must be a datetime, got {moment!r} ({type(moment).__name__})")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got the naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _optional_float(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None
