"""The pure intake step: decoded messages in; accepted, rejected and new versions out; one message never stops it."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from aggregator import AggregationConfig, AsyncServer, PendingUpdate
from aggregator.intake import Intake, IntakeMessage
from producers.updates import build_update
from schemas.messages import ClientMetrics
from schemas.rejections import Rejection, RejectionReason
from schemas.wire import DecodedUpdate, decode_update

MODEL = "m"
PARAMS = {"w": np.zeros(3, dtype=np.float32)}
NOW = datetime.now(UTC)


def _decoded(index: int, base_version: int = 0, client: str = "clinic-a", **metrics: object) -> DecodedUpdate:
    _, value = build_update(
        client_id=client,
        model_name=MODEL,
        base_version=base_version,
        sample_count=5,
        delta={"w": np.full(3, 0.1, dtype=np.float32)},
        metrics=ClientMetrics(**metrics),  # type: ignore[arg-type]
        update_id=f"{index:032x}",
    )
    decoded = decode_update(value)
    assert isinstance(decoded, DecodedUpdate)
    return decoded


def _message(index: int, decoded: DecodedUpdate | Rejection, sent_at: datetime | None = None) -> IntakeMessage[int]:
    """The message as the broker stamped it: by default at the moment the client created it."""
    if sent_at is None:
        sent_at = decoded.header.created_at if isinstance(decoded, DecodedUpdate) else NOW
    return IntakeMessage(index, decoded, sent_at)


def _record(message: IntakeMessage[int], decoded: DecodedUpdate, update: PendingUpdate) -> str:
    return f"row {message.source}"


def _intake(buffer_size: int = 2, **kwargs: object) -> Intake:
    config = AggregationConfig.from_dict({"buffer_size": buffer_size, "max_wait_seconds": None, "max_staleness": 1})
    return Intake(AsyncServer(config, PARAMS), MODEL, **kwargs)  # type: ignore[arg-type]


def test_messages_are_judged_in_order_and_a_full_buffer_aggregates_before_the_next_one() -> None:
    intake = _intake()
    messages = [
        _message(0, _decoded(0, training_steps=12)),
        _message(1, Rejection(RejectionReason.MALFORMED_ENVELOPE, "no magic")),
        _message(2, _decoded(2)),
        _message(3, _decoded(2)),  # the same update again
        _message(4, _decoded(4, base_version=1)),  # trained on the version message 2 made
        _message(5, _decoded(5, base_version=2)),  # a version that does not exist yet
    ]
    outcome = intake.step(messages, _record, now=NOW)
    assert [item.source for item in outcome.accepted] == [0, 2, 4]
    assert [item.record for item in outcome.accepted] == ["row 0", "row 2", "row 4"]
    assert outcome.accepted[0].update.training_steps == 12, "the header's local steps reach the buffer"
    assert [(item.source, item.reason) for item in outcome.rejected] == [
        (1, RejectionReason.MALFORMED_ENVELOPE),
        (3, RejectionReason.DUPLICATE_UPDATE),
        (5, RejectionReason.FUTURE_BASE_VERSION),
    ]
    assert [version.version for version in outcome.versions] == [1]
    assert [update.base_version for update in intake.server.pending] == [1]


def test_the_staleness_gate_and_the_content_checks_reject_with_every_reason() -> None:
    intake = _intake(buffer_size=1)
    intake.step([_message(index, _decoded(index)) for index in range(2)], _record, now=NOW)
    assert intake.server.version == 2
    outcome = intake.step([_message(7, _decoded(7, base_version=0))], _record, now=NOW)
    assert [item.reason for item in outcome.rejected] == [RejectionReason.TOO_STALE]
    _, value = build_update(
        client_id="clinic-a", model_name="other", base_version=2, sample_count=1, delta={"w": np.zeros(3)}
    )
    foreign = decode_update(value)
    assert [item.reason for item in intake.step([_message(8, foreign)], _record, now=NOW).rejected] == [
        RejectionReason.UNKNOWN_MODEL
    ]


def test_a_message_whose_judging_raises_becomes_an_internal_error_and_the_rest_go_on() -> None:
    def fail_on_one(update_id: str) -> None:
        if update_id == f"{1:032x}":
            raise RuntimeError("injected")

    intake = _intake(before_judging=fail_on_one)

    def record(message: IntakeMessage[int], decoded: DecodedUpdate, update: PendingUpdate) -> str:
        if message.source == 2:
            raise ValueError("a row that cannot be built")
        return "row"

    outcome = intake.step([_message(index, _decoded(index)) for index in range(4)], record, now=NOW)
    assert [item.source for item in outcome.accepted] == [0, 3]
    assert [(item.source, item.reason) for item in outcome.rejected] == [
        (1, RejectionReason.INTERNAL_ERROR),
        (2, RejectionReason.INTERNAL_ERROR),
    ]
    assert "RuntimeError: injected" in outcome.rejected[0].problems[0].detail
    assert outcome.rejected[1].decoded is not None, "the rejection keeps what decoding found"
    assert [update.update_id for update in outcome.versions[0].updates] == [f"{0:032x}", f"{3:032x}"]
    assert f"{2:032x}" not in intake.known_update_ids, "a rejected message can come again"


def test_authenticity_and_the_replay_window_come_first() -> None:
    def only_clinic_a(decoded: DecodedUpdate) -> Rejection | None:
        if decoded.header.client_id == "clinic-a":
            return None
        return Rejection(RejectionReason.UNKNOWN_CLIENT, decoded.header.client_id)

    intake = _intake(authenticate=only_clinic_a, replay_window_seconds=60.0)
    replayed = _decoded(1)
    late = replayed.header.created_at + timedelta(minutes=5)
    outcome = intake.step(
        [_message(0, _decoded(0, client="clinic-b")), _message(1, replayed, sent_at=late), _message(2, _decoded(2))],
        _record,
        now=NOW,
    )
    assert [item.reason for item in outcome.rejected] == [
        RejectionReason.UNKNOWN_CLIENT,
        RejectionReason.OUTSIDE_REPLAY_WINDOW,
    ]
    assert [item.source for item in outcome.accepted] == [2]


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _intake().step([], _record, now=datetime(2025, 1, 1))


def test_with_aggregate_bursts_a_batch_of_more_than_k_updates_makes_one_version_of_them_all() -> None:
    def run(bursts: bool) -> tuple[list[int], list[int], int]:  # version sizes, stalenesses, rejected
        config = AggregationConfig.from_dict(
            {"buffer_size": 2, "max_wait_seconds": None, "max_staleness": 1, "aggregate_bursts": bursts}
        )
        intake = Intake(AsyncServer(config, PARAMS), MODEL)
        outcome = intake.step([_message(index, _decoded(index)) for index in range(5)], _record, now=NOW)
        stalenesses = [staleness for version in outcome.versions for staleness in version.stalenesses]
        return [len(version.update_ids) for version in outcome.versions], stalenesses, len(outcome.rejected)

    # one version per K: later updates of the same burst count as staler, the fifth as too stale (limit 1)
    assert run(bursts=False) == ([2, 2], [0, 0, 1, 1], 1)
    assert run(bursts=True) == ([5], [0, 0, 0, 0, 0], 0), "the burst is one version, every update fresh"


def test_a_burst_smaller_than_k_waits_as_before() -> None:
    config = AggregationConfig.from_dict({"buffer_size": 4, "max_wait_seconds": None, "aggregate_bursts": True})
    intake = Intake(AsyncServer(config, PARAMS), MODEL)
    outcome = intake.step([_message(index, _decoded(index)) for index in range(3)], _record, now=NOW)
    assert outcome.versions == () and len(intake.server.pending) == 3
