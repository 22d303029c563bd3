"""Synchronous rounds with a drawn cohort: the draw, the signed header that names it, the configuration, the
intake that enforces it, and the demo's comparison of wall time to the same accuracy with the other mode."""

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from aggregator import AggregationConfig, AsyncServer
from aggregator.errors import InvalidConfigError
from aggregator.intake import Intake, IntakeMessage
from fedstream import cli
from fedstream.demo import DemoSettings, synchronous_aggregation
from fedstream.mode_comparison import (
    AccuracyPoint,
    compare_runs,
    newest_comparable_run,
    time_to_accuracy,
    write_run,
)
from producers.updates import build_update
from schemas.cohorts import cohort_draw, in_cohort
from schemas.messages import ModelHeader
from schemas.rejections import RejectionReason
from schemas.wire import DecodedModel, DecodedUpdate, decode_model, decode_update, encode_model, tensors_payload

MODEL = "har-cnn"
PARAMS = {"w": np.zeros(3, dtype=np.float32)}
NOW = datetime.now(UTC)
CLIENTS = [f"device-{index}" for index in range(2000)]


def test_a_draw_is_a_fixed_number_in_the_unit_interval_per_model_version_and_client() -> None:
    draws = [cohort_draw(MODEL, 7, client) for client in CLIENTS]
    assert all(0.0 <= draw < 1.0 for draw in draws)
    assert draws == [cohort_draw(MODEL, 7, client) for client in CLIENTS], "the job and the client agree"
    assert draws != [cohort_draw(MODEL, 8, client) for client in CLIENTS], "each version draws anew"
    assert draws != [cohort_draw("other-model", 7, client) for client in CLIENTS]
    drawn = sum(in_cohort(MODEL, 7, client, 0.3) for client in CLIENTS)
    assert abs(drawn - 600) < 4 * math.sqrt(2000 * 0.3 * 0.7), f"{drawn} of 2000 drawn at fraction 0.3"


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.0000001, math.nan, math.inf, -math.inf])
def test_a_fraction_outside_zero_to_one_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="cohort fraction"):
        in_cohort(MODEL, 0, "device-0", fraction)


def test_fraction_one_and_no_fraction_take_every_client() -> None:
    assert all(in_cohort(MODEL, 3, client, 1.0) and in_cohort(MODEL, 3, client, None) for client in CLIENTS)


def _header(**fields: object) -> ModelHeader:
    _, digest = tensors_payload(PARAMS)
    base = {
        "model_name": MODEL,
        "version": 1,
        "parent_version": 0,
        "parent_parameter_hash": "a" * 64,
        "parameter_hash": "b" * 64,
        "payload_sha256": digest,
        "created_at": NOW,
    }
    return ModelHeader.model_validate({**base, **fields})


def test_a_version_that_opens_no_round_is_sent_as_before_and_one_that_does_names_its_fraction() -> None:
    payload, _ = tensors_payload(PARAMS)
    plain = encode_model(_header(), payload)
    assert b"cohort_fraction" not in plain, "no new key in the signed bytes of asynchronous versions"
    assert decode_model(encode_model(_header(cohort_fraction=0.25), payload)).header.cohort_fraction == 0.25


@pytest.mark.parametrize("fraction", [0.0, -1.0, 1.5, "0.5x", math.nan, math.inf, 2**63])
def test_a_header_with_a_fraction_outside_zero_to_one_is_invalid(fraction: object) -> None:
    with pytest.raises(ValidationError):
        _header(cohort_fraction=fraction)


def test_a_cohort_needs_a_synchronous_strategy_and_round_trips_through_config_json() -> None:
    config = AggregationConfig.from_dict({"mode": "fedavg", "cohort_fraction": 0.5})
    assert config.to_dict()["cohort_fraction"] == 0.5
    assert AggregationConfig.from_dict(config.to_dict()) == config
    assert "cohort_fraction" not in AggregationConfig.from_dict({"mode": "fedavg"}).to_dict()
    with pytest.raises(InvalidConfigError, match="synchronous round"):
        AggregationConfig.from_dict({"mode": "fedbuff", "cohort_fraction": 0.5})
    for bad in (0, 1.5, -0.1, math.nan, True, "half"):
        with pytest.raises(InvalidConfigError, match="cohort_fraction"):
            AggregationConfig.from_dict({"mode": "fedavg", "cohort_fraction": bad})


def _decoded(index: int, client: str, base_version: int = 0) -> DecodedUpdate:
    _, value = build_update(
        client_id=client,
        model_name=MODEL,
        base_version=base_version,
        sample_count=5,
        delta={"w": np.full(3, 0.1, dtype=np.float32)},
        update_id=f"{index:032x}",
    )
    decoded = decode_update(value)
    assert isinstance(decoded, DecodedUpdate)
    return decoded


def test_intake_takes_the_round_from_its_cohort_only_and_a_late_update_is_stale() -> None:
    config = AggregationConfig.from_dict({"mode": "fedavg", "buffer_size": 2, "cohort_fraction": 0.5})
    intake = Intake(AsyncServer(config, PARAMS), MODEL)
    members = [client for client in CLIENTS if in_cohort(MODEL, 0, client, 0.5)][:3]
    outsider = next(client for client in CLIENTS if not in_cohort(MODEL, 0, client, 0.5))
    messages = [
        _decoded(0, outsider),
        _decoded(1, members[0]),
        _decoded(2, members[1]),  # the round's second update closes it: version 1
        _decoded(3, members[2]),  # trained on version 0 too, but its round is over
    ]
    outcome = intake.step(
        [IntakeMessage(index, decoded, decoded.header.created_at) for index, decoded in enumerate(messages)],
        lambda message, decoded, update: None,
        now=NOW,
    )
    assert [item.source for item in outcome.accepted] == [1, 2]
    assert [(item.source, item.reason) for item in outcome.rejected] == [
        (0, RejectionReason.NOT_IN_COHORT),
        (3, RejectionReason.TOO_STALE),
    ]
    assert "not in the cohort" in outcome.rejected[0].problems[0].detail
    assert [version.version for version in outcome.versions] == [1]


def test_the_demos_rounds_over_select_by_thirty_percent_and_are_a_valid_fedavg_config() -> None:
    options = synchronous_aggregation(DemoSettings(), devices=24)
    config = AggregationConfig.from_dict(options)
    assert config.strategy == "fedavg" and config.buffer.buffer_size == 10
    assert config.cohort_fraction == pytest.approx(13 / 24)
    assert synchronous_aggregation(DemoSettings(), devices=5)["cohort_fraction"] == 1.0, "never above 1"


def test_the_demo_refuses_rounds_with_differential_privacy_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["demo", "--mode", "fedavg", "--dp-noise-multiplier", "1.0"]) == 2
    assert "--mode fedavg runs without" in capsys.readouterr().err


def _points(*pairs: tuple[float, float]) -> list[AccuracyPoint]:
    return [AccuracyPoint(elapsed, accuracy) for elapsed, accuracy in pairs]


def test_wall_time_is_compared_at_the_best_accuracy_both_runs_reached() -> None:
    fedavg = _points((0, 0.2), (30, 0.5), (60, 0.7), (90, 0.75))
    fedbuff = _points((0, 0.2), (10, 0.6), (20, 0.72), (40, 0.8))
    assert time_to_accuracy(fedbuff, 0.75) == 40 and time_to_accuracy(fedbuff, 0.9) is None
    found = compare_runs("fedavg", fedavg, "fedbuff", fedbuff, Path("runs/20261202-080000"))
    assert found is not None
    assert (found.target, found.seconds, found.other_seconds) == (0.75, 90, 40)
    assert "fedbuff 2.2x faster" in found.line() and "20261202-080000" in found.line()
    assert compare_runs("fedavg", [], "fedbuff", fedbuff, Path("x")) is None


def _run(root: Path, name: str, mode: str, **changes: object) -> Path:
    folder = root / name
    folder.mkdir()
    description = {"mode": mode, "data": "UCI HAPT", "held_out": ["5"], "seed": 0, "duration_seconds": 180.0}
    write_run(folder, {**description, "personalized": False, **changes})
    (folder / "accuracy.csv").write_text("elapsed_seconds,held_out_accuracy\n0,0.1\n")
    return folder


def test_the_run_compared_with_is_the_newest_of_the_other_mode_on_the_same_data_and_length(tmp_path: Path) -> None:
    this = _run(tmp_path, "20261202-090000", "fedavg")
    _run(tmp_path, "20261202-070000", "fedbuff")
    newest = _run(tmp_path, "20261202-080000", "fedbuff")
    _run(tmp_path, "20261202-083000", "fedbuff", seed=1)
    _run(tmp_path, "20261202-084000", "fedbuff", duration_seconds=60.0)
    _run(tmp_path, "20261202-085000", "fedavg")
    description = json.loads((this / "run.json").read_text())
    assert newest_comparable_run(tmp_path, this, description) == newest
    assert newest_comparable_run(tmp_path / "none", this, description) is None


class _Rounds:
    """The job's side of synchronous rounds of one update, for the fleet: each update sent closes its round.

    It stands in for the subscriber (``poll``, ``newest``) and the publisher (``publish_chunks``), and records
    the newest version at every send, so the test sees what each device knew when it sent.
    """

    max_message_bytes = 1 << 20

    def __init__(self, parameters: dict[str, np.ndarray], fraction: float) -> None:
        self.parameters = parameters
        self.fraction = fraction
        self.version = 0
        self.sent: list[tuple[str, int, int]] = []  # (client, base version, newest version when sent)

    def poll(self, timeout_seconds: float = 0.0) -> int:
        return self.version

    def newest(self, timeout_seconds: float = 30.0) -> DecodedModel:
        return DecodedModel(_header(version=self.version, parent_version=None, parent_parameter_hash=None,
                                    cohort_fraction=self.fraction), self.parameters)  # fmt: skip

    def publish_chunks(self, client_id: str, values: list[bytes], *, model_name: str, wait: bool = True) -> None:
        decoded = decode_update(values[0])
        assert isinstance(decoded, DecodedUpdate)
        self.sent.append((client_id, decoded.header.base_version, self.version))
        if decoded.header.base_version == self.version:
            self.version += 1  # a round of one update: the first one in closes it

    def flush(self) -> None:
        return


def test_a_synchronous_fleet_trains_only_drawn_devices_and_sends_no_update_whose_round_closed() -> None:
    from producers.client import FederatedClient, LocalData
    from producers.fleet import DeviceSpeeds, SimulatedFleet
    from producers.models import model_weights, table_model
    from producers.training import LocalTrainingConfig

    rng = np.random.default_rng(0)
    features = rng.standard_normal((40, 4)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64)
    data = LocalData(features[:30], labels[:30], features[30:], labels[30:])
    rounds = _Rounds(model_weights(table_model((4,), 2, seed=0)[1]), fraction=0.5)
    clients = [
        FederatedClient(f"device-{index}", MODEL, table_model((4,), 2, seed=0)[1], data, LocalTrainingConfig())
        for index in range(8)
    ]
    speeds = DeviceSpeeds(median_seconds=0.05, sigma=0.5, seed=3)
    fleet = SimulatedFleet(clients, rounds, rounds, speeds, synchronous=True)  # type: ignore[arg-type]
    report = fleet.run(5.0)
    assert rounds.version >= 2, "rounds went on"
    assert report.published == len(rounds.sent) >= 2
    for client, base, newest in rounds.sent:
        assert in_cohort(MODEL, base, client, 0.5), f"{client} was not drawn for the round on version {base}"
        assert base == newest, f"{client} sent an update of the closed round on version {base}"
    assert report.rounds_sat_out > 0, "devices left out of a round wait for the next"
    assert report.late_unsent > 0, "drawn devices slower than the round's first are not sent"
