"""`fedstream report`: the summary of plain rows (fedstream.report.data) and the HTML page (fedstream.report.render)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from pyspark.sql.types import BinaryType

from fedstream.cli import _parser
from fedstream.report import ReportData, pseudonym, render_html, summarize
from fedstream.report.data import (
    MAX_STALENESS_BINS,
    MAX_TIME_BUCKETS,
    REJECTED_COLUMNS,
    UPDATE_COLUMNS,
    VERSION_COLUMNS,
    automatic_bucket_seconds,
    staleness_histogram,
)
from schemas.rows import ModelVersionRow, RejectedUpdateRow, UpdateRow
from streaming_jobs.tables import MODEL_VERSIONS, REJECTED_UPDATES, UPDATES
from tests.rows import rejected_row, update_row, version_row

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CLIENTS = [f"patient-mrn-{number:05d}" for number in (1, 12, 123, 1234, 7, 70, 700, 7000)]
"""Client ids that look like what must not leak (ids may be ePHI); some are prefixes of others."""
SCRIPT = '<script>alert("owned")</script>'


@dataclass
class Fleet:
    versions: list[ModelVersionRow] = field(default_factory=list)
    updates: list[UpdateRow] = field(default_factory=list)
    rejected: list[RejectedUpdateRow] = field(default_factory=list)

    def summary(self, **options: Any) -> ReportData:
        options.setdefault("generated_at", START + timedelta(hours=1))
        return summarize("m", self.versions, self.updates, self.rejected, **options)


def fleet(*, dp: bool = False, accuracy: bool = False) -> Fleet:
    """40 updates from 8 clients every 15 s from START; versions 1-9 take 4 each (the last 4 wait); 6 rejections."""
    rows = Fleet()
    rows.versions.append(version_row(0, created_at=START))
    for number in range(40):
        rows.updates.append(
            update_row(number, client_id=CLIENTS[number % 8], received_at=START + timedelta(seconds=15 * number))
        )
    for version in range(1, 10):
        taken = rows.updates[4 * (version - 1) : 4 * version]
        rows.versions.append(
            version_row(
                version,
                created_at=taken[-1].received_at + timedelta(seconds=5),
                update_ids=[update.update_id for update in taken],
                update_weights=[0.25] * 4,
                update_staleness=[0, 1, 0, version % 3],
                epsilon=0.5 * version if dp else None,
                epsilon_assumption="no_amplification" if dp else None,
                federated_validation_accuracy=0.5 + version / 40 if accuracy else None,
            )
        )
    for seconds, reason, client, detail in [
        (20, "bad_signature", CLIENTS[2], "signature does not verify"),
        (80, "bad_signature", CLIENTS[2], "signature does not verify"),
        (95, "bad_signature", CLIENTS[2], "signature does not verify"),
        (130, "unknown_client", "stranger-9", "no enrolled key for client 'stranger-9'"),
        (200, "too_stale", CLIENTS[5], f"base_version 0 is 12 behind; client {CLIENTS[5]!r}"),
        (500, "malformed_envelope", None, f"bad magic {SCRIPT}"),
    ]:
        rows.rejected.append(
            rejected_row(reason=reason, client_id=client, detail=detail, rejected_at=START + timedelta(seconds=seconds))
        )
    return rows


# --- the summary -------------------------------------------------------------------------------------------------


def test_summary_counts_versions_updates_and_rejections() -> None:
    data = fleet().summary()

    assert data.model_name == "m"
    assert [point.version for point in data.versions] == list(range(10))
    assert data.latest_version == 9
    assert [point.update_count for point in data.versions] == [0] + [4] * 9
    assert data.accepted_count == 40
    assert data.in_version_count == 36
    assert data.rejected_count == 6
    assert data.unidentified_rejected_count == 1
    assert data.first_at == START
    assert data.last_at == START + timedelta(seconds=15 * 39)  # the last update, after the last rejection (500 s)
    assert data.generated_at == START + timedelta(hours=1)


def test_rejection_reasons_most_frequent_first_with_distinct_clients() -> None:
    reasons = {summary.reason: summary for summary in fleet().summary().reasons}

    assert list(reasons) == ["bad_signature", "malformed_envelope", "too_stale", "unknown_client"]
    assert (reasons["bad_signature"].count, reasons["bad_signature"].clients) == (3, 1)
    assert reasons["bad_signature"].latest_at == START + timedelta(seconds=95)
    assert reasons["malformed_envelope"].clients == 0


def test_minute_buckets_count_every_message_once_and_keep_empty_minutes() -> None:
    rows = fleet()
    rows.rejected.append(rejected_row(reason="too_stale", rejected_at=START + timedelta(minutes=20)))
    data = rows.summary(bucket_seconds=60)

    assert data.bucket_seconds == 60
    assert [bucket.start for bucket in data.buckets] == [START + timedelta(minutes=m) for m in range(21)]
    assert [bucket.accepted for bucket in data.buckets[:11]] == [4] * 10 + [0]
    assert data.buckets[0].rejected == {"bad_signature": 1}
    assert data.buckets[1].rejected == {"bad_signature": 2}
    assert data.buckets[8].rejected == {"malformed_envelope": 1}
    assert data.buckets[20].rejected == {"too_stale": 1}
    assert all(bucket.accepted == 0 and not bucket.rejected for bucket in data.buckets[11:20])
    assert sum(bucket.accepted for bucket in data.buckets) == 40
    assert sum(sum(bucket.rejected.values()) for bucket in data.buckets) == 7


def test_buckets_are_aligned_on_whole_minutes() -> None:
    rows = Fleet(
        updates=[
            update_row(0, received_at=START + timedelta(seconds=59)),
            update_row(1, received_at=START + timedelta(seconds=61)),
        ]
    )
    data = rows.summary(bucket_seconds=60)

    assert [(bucket.start, bucket.accepted) for bucket in data.buckets] == [
        (START, 1),
        (START + timedelta(minutes=1), 1),
    ]


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        (timedelta(0), 10),
        (timedelta(minutes=5), 10),  # 31 ten-second buckets
        (timedelta(minutes=20), 30),
        (timedelta(minutes=50), 60),
        (timedelta(hours=2), 300),
        (timedelta(days=2), 3600),
        (timedelta(days=30), 86400),
        (timedelta(days=365), 7 * 86400),
    ],
)
def test_automatic_bucket_size_is_the_smallest_that_fits(span: timedelta, expected: int) -> None:
    assert automatic_bucket_seconds(START, START + span) == expected


def test_automatic_buckets_of_a_long_history_stay_within_the_limit() -> None:
    size = automatic_bucket_seconds(START, START + timedelta(days=3 * 365))

    assert size % (7 * 86400) == 0
    assert (3 * 365 * 86400) / size + 1 <= MAX_TIME_BUCKETS


def test_summary_picks_the_bucket_size_from_the_activity_span() -> None:
    data = fleet().summary()  # 585 s of activity: 59 buckets of 10 s fit in 60

    assert data.bucket_seconds == 10
    assert len(data.buckets) <= MAX_TIME_BUCKETS
    assert sum(bucket.accepted for bucket in data.buckets) == 40


def test_staleness_histogram_of_the_versions_lists() -> None:
    data = fleet().summary()

    # each version: 0, 1, 0 and version % 3, for versions 1..9
    assert [(each.label, each.count) for each in data.staleness_bins] == [("0", 18 + 3), ("1", 9 + 3), ("2", 3)]
    assert staleness_histogram([0, 0, 1, 3]) == staleness_histogram([3, 1, 0, 0])
    assert [each.count for each in staleness_histogram([0, 0, 1, 3])] == [2, 1, 0, 1]
    assert staleness_histogram([]) == ()


def test_large_stalenesses_are_binned_in_ranges() -> None:
    bins = staleness_histogram([0, 5, 99, 99, 100, 250])

    assert len(bins) <= MAX_STALENESS_BINS
    assert sum(each.count for each in bins) == 6
    assert bins[0].label == "0-6"
    assert bins[0].count == 2
    assert bins[-1].low <= 250 <= bins[-1].high
    with pytest.raises(ValueError, match="non-negative"):
        staleness_histogram([1, -2])


def test_clients_are_pseudonymous_stable_and_counted() -> None:
    first, second = fleet().summary(), fleet(dp=True).summary()
    by_pseudonym = {client.pseudonym: client for client in first.clients}

    assert [client.pseudonym for client in first.clients] == [client.pseudonym for client in second.clients]
    assert pseudonym(CLIENTS[2]) == hashlib.sha256(CLIENTS[2].encode()).hexdigest()[:12]
    assert all(client.pseudonym not in CLIENTS and len(client.pseudonym) == 12 for client in first.clients)
    assert len(first.clients) == 9  # 8 senders of updates and one stranger whose only message was rejected
    busiest = by_pseudonym[pseudonym(CLIENTS[2])]
    assert (busiest.accepted, busiest.in_versions, busiest.rejected, busiest.samples) == (5, 5, 3, 5 * 64)
    assert first.clients[0] == busiest
    assert by_pseudonym[pseudonym(CLIENTS[7])].in_versions == 4  # its 5th update (number 39) waits
    assert by_pseudonym[pseudonym("stranger-9")].accepted == 0


def test_details_show_client_ids_as_pseudonyms_only() -> None:
    data = fleet().summary()
    details = {summary.reason: summary.latest_detail for summary in data.reasons}

    assert details["too_stale"] == f"base_version 0 is 12 behind; client '[client {pseudonym(CLIENTS[5])}]'"
    assert details["unknown_client"] == f"no enrolled key for client '[client {pseudonym('stranger-9')}]'"
    assert not any(client in detail for client in CLIENTS for detail in details.values())


def test_rows_of_other_models_are_left_out() -> None:
    rows = fleet()
    rows.versions.append(version_row(10, model_name="other", created_at=START))
    rows.updates.append(update_row(99, model_name="other", client_id="other-client", received_at=START))

    data = rows.summary()

    assert data.latest_version == 9
    assert data.accepted_count == 40
    assert pseudonym("other-client") not in {client.pseudonym for client in data.clients}


def test_plain_dict_rows_are_summarised_like_pydantic_rows() -> None:
    rows = fleet(dp=True)
    as_dicts = Fleet(
        versions=[row.model_dump() for row in rows.versions],
        updates=[{column: getattr(row, column) for column in UPDATE_COLUMNS} for row in rows.updates],
        rejected=[{column: getattr(row, column) for column in REJECTED_COLUMNS} for row in rows.rejected],
    )

    assert as_dicts.summary() == rows.summary()


def test_naive_timestamps_and_non_rows_are_refused() -> None:
    naive = update_row(0).model_dump() | {"received_at": datetime(2025, 3, 1, 12, 0)}

    with pytest.raises(ValueError, match=r"updates\.received_at must be timezone-aware"):
        summarize("m", [], [naive], [])
    with pytest.raises(TypeError, match="a model_versions row must be a mapping"):
        summarize("m", ["not a row"], [], [])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="bucket_seconds"):
        summarize("m", [], [], [], bucket_seconds=0)


def test_dp_and_accuracy_are_flagged_only_when_the_versions_carry_them() -> None:
    plain, private, evaluated = fleet().summary(), fleet(dp=True).summary(), fleet(accuracy=True).summary()

    assert (plain.dp_enabled, plain.has_accuracy) == (False, False)
    assert (private.dp_enabled, private.has_accuracy) == (True, False)
    assert (evaluated.dp_enabled, evaluated.has_accuracy) == (False, True)
    assert private.epsilon_assumption == "no_amplification"
    assert [point.epsilon for point in private.versions][-1] == pytest.approx(4.5)


def test_the_reader_never_asks_for_a_blob() -> None:
    for columns, table in [
        (VERSION_COLUMNS, MODEL_VERSIONS),
        (UPDATE_COLUMNS, UPDATES),
        (REJECTED_COLUMNS, REJECTED_UPDATES),
    ]:
        types = {column.name: column.dataType for column in table.schema.fields}
        assert set(columns) <= set(types), f"{table.name} lacks {set(columns) - set(types)}"
        assert not [column for column in columns if isinstance(types[column], BinaryType)]


# --- the page ----------------------------------------------------------------------------------------------------


VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class Page(HTMLParser):
    """The page as html.parser reads it: tags properly nested and closed, each chart's SVGs, all text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.problems: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.svgs_per_figure: list[int] = []
        self.svg_in: list[str] = []  # the id of the section around each <svg>
        self.section: str | None = None
        self.text: list[str] = []
        self.doctype = False
        self.feed(text)
        self.close()
        if self.open:
            self.problems.append(f"never closed: {self.open}")

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "section":
            self.section = attributes.get("id")
        if tag == "figure":
            self.svgs_per_figure.append(0)
        if tag == "svg":
            self.svg_in.append(str(self.section))
            if self.svgs_per_figure:
                self.svgs_per_figure[-1] += 1
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
            return
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def count(self, tag: str) -> int:
        return sum(1 for name, _ in self.tags if name == tag)


def test_page_is_well_formed_html_with_one_svg_per_chart() -> None:
    page = Page(render_html(fleet(dp=True, accuracy=True).summary()))

    assert page.doctype
    assert page.problems == []
    assert [name for name, _ in page.tags[:3]] == ["html", "head", "meta"]
    assert page.svgs_per_figure == [1] * 6
    assert page.svg_in == ["versions", "staleness", "activity", "clients", "privacy", "accuracy"]
    assert page.count("svg") == 6


def test_charts_draw_their_data() -> None:
    data = fleet().summary(bucket_seconds=60)
    page = Page(render_html(data))
    bars = [attrs for name, attrs in page.tags if name == "rect" and attrs.get("class") == "bar"]
    paths = [attrs for name, attrs in page.tags if name == "path"]
    points = [attrs for name, attrs in page.tags if name == "circle"]

    staleness = 3  # stalenesses 0, 1 and 2
    activity = 10 + 5  # accepted in minutes 0-9; rejected in minutes 0, 1, 2, 3 and 8
    clients = 8 + 4 + 3  # in a version: 8 clients; waiting: 4 (updates 36-39); rejected: 3 clients
    assert len(bars) == staleness + activity + clients
    assert all(float(str(attrs["height"])) > 0 and float(str(attrs["width"])) > 0 for attrs in bars)
    assert len(paths) == 1 and str(paths[0]["d"]).count("L") == 9  # versions 0..9
    assert len(points) == 10


def test_epsilon_chart_only_with_dp() -> None:
    plain = Page(render_html(fleet().summary()))
    private = Page(render_html(fleet(dp=True).summary()))

    assert "privacy" not in plain.svg_in
    assert "Differential privacy was off" in "".join(plain.text)
    assert "privacy" in private.svg_in
    assert "Differential privacy was off" not in "".join(private.text)
    assert "no_amplification" in "".join(private.text)


def test_accuracy_chart_only_when_the_tables_hold_accuracy() -> None:
    plain = Page(render_html(fleet().summary()))
    evaluated = Page(render_html(fleet(accuracy=True).summary()))

    assert "accuracy" not in plain.svg_in
    assert "The tables hold no accuracy" in "".join(plain.text)
    assert "accuracy" in evaluated.svg_in
    assert "Evaluation metrics live in MLflow" in "".join(plain.text)
    assert "Evaluation metrics live in MLflow" in "".join(evaluated.text)


def test_markup_from_the_tables_is_escaped() -> None:
    rows = fleet()
    rows.rejected.append(rejected_row(reason='<img src=x onerror="alert(1)">', detail=SCRIPT, rejected_at=START))
    text = render_html(
        summarize('<b onclick="x()">m</b>', [], rows.updates, rows.rejected, source="</title><script>x()</script>")
    )
    page = Page(text)

    assert page.count("script") == 0
    assert page.count("img") == 0
    assert page.count("b") == 0
    assert page.problems == []
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;" in text
    assert SCRIPT in "".join(page.text)  # shown to the reader as text
    assert '<b onclick="x()">m</b>' in "".join(page.text)


def test_raw_client_ids_never_reach_the_page() -> None:
    text = render_html(fleet(dp=True, accuracy=True).summary())

    assert not [client for client in [*CLIENTS, "stranger-9"] if client in text]
    assert pseudonym(CLIENTS[2]) in text


def test_page_loads_nothing_from_anywhere() -> None:
    text = render_html(fleet(dp=True, accuracy=True).summary()).lower()

    for reference in ("http:", "https:", "//", "src=", "<link", "@import", "url(", "<script", "@font-face"):
        if reference == "//":
            assert "://" not in text
        else:
            assert reference not in text, reference


def test_an_empty_model_renders_without_charts() -> None:
    data = summarize("m", [], [], [], generated_at=START)
    page = Page(render_html(data))

    assert page.problems == []
    assert page.count("svg") == 0
    assert "No global version has been recorded yet." in "".join(page.text)
    assert data.first_at is None and data.buckets == () and data.clients == ()


def test_the_header_states_counts_span_and_generation_time() -> None:
    page = Page(render_html(fleet().summary(source="/data/tables")))
    text = " ".join(page.text)

    assert page.count("dt") == 8
    for expected in [
        "fedstream report: m",
        "10 (latest: version 9)",
        "40 (36 of them in a version)",
        "6, 1 without a client id",
        "2025-03-01 12:00:00 UTC to 2025-03-01 12:09:45 UTC (9 min 45 s)",
        "2025-03-01 13:00:00 UTC",
        "/data/tables",
    ]:
        assert expected in text, expected


def test_cli_has_a_report_command() -> None:
    args = _parser().parse_args(["report", "--model-name", "heart-mlp", "--out", "x.html", "--tables-root", "t"])

    assert (args.model_name, args.out, args.tables_root) == ("heart-mlp", "x.html", "t")
    assert args.handler.__name__ == "_report"
    assert _parser().parse_args(["report"]).out == "report.html"
