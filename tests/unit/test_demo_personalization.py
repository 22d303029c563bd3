"""``fedstream demo --personalize``: the settings it makes, and the per-device comparison the summary prints.

The pieces run here without the stack: devices built as the demo builds them, a headless global version as the
job publishes it, and the summary's lines and CSV.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fedstream import cli, demo
from fedstream.demo import DEMO_FINE_TUNING_EPOCHS, DemoSettings
from fedstream.demo_data import DemoData, HeldOutEvaluator
from producers.client import FederatedClient, LocalData
from producers.models import table_model
from producers.personalization import HAR_CNN_HEAD, ClientPersonalization, shared_model_weights
from producers.training import Evaluation, LocalTrainingConfig
from schemas.messages import ModelHeader
from schemas.wire import DecodedModel


def _recorded_settings(monkeypatch: pytest.MonkeyPatch, *argv: str) -> DemoSettings:
    runs: list[DemoSettings] = []
    monkeypatch.setattr(demo, "run_demo", lambda settings, data=None: runs.append(settings) or 0)
    assert cli.main(["demo", *argv]) == 0
    (settings,) = runs
    return settings


@pytest.mark.parametrize(
    ("argv", "prefixes", "epochs"),
    [
        ((), (), 0),
        (("--personalize",), HAR_CNN_HEAD, DEMO_FINE_TUNING_EPOCHS),
        (("--personalize", "head"), HAR_CNN_HEAD, 0),
        (("--personalize", "fine-tune"), (), DEMO_FINE_TUNING_EPOCHS),
    ],
)
def test_personalize_sets_the_head_and_the_fine_tuning(
    monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], prefixes: tuple[str, ...], epochs: int
) -> None:
    settings = _recorded_settings(monkeypatch, *argv)
    assert settings.personal_prefixes == prefixes and settings.fine_tuning_epochs == epochs
    assert settings.personalized == bool(argv)
    if not argv:
        assert settings == DemoSettings(duration_seconds=180.0), "the default demo is unchanged"


def _local(seed: int, shift: float) -> LocalData:
    generator = np.random.default_rng(seed)
    features = generator.standard_normal((60, 8)).astype(np.float32)
    labels = (features[:, 0] > shift).astype(np.int64)
    return LocalData(features[:45], labels[:45], features[45:], labels[45:])


def _headless_version(shared: dict[str, np.ndarray]) -> DecodedModel:
    header = ModelHeader(
        model_name="table-mlp",
        version=0,
        parent_version=None,
        parent_parameter_hash=None,
        parameter_hash="cd" * 32,
        payload_sha256="ef" * 32,
        created_at=datetime.now(UTC),
    )
    return DecodedModel(header=header, parameters=shared)


def test_devices_built_as_the_demo_builds_them_compare_global_and_personalized(tmp_path: Path) -> None:
    settings = DemoSettings(personal_prefixes=HAR_CNN_HEAD, fine_tuning_epochs=1)
    data = DemoData(
        title="t",
        description="t",
        training={f"subject-{index}": _local(index, shift=index - 1.0) for index in range(3)},
        held_out={"9": (_local(9, 0.0).train_features, _local(9, 0.0).train_labels)},
        model_name="table-mlp",
        sample_shape=(8,),
        num_classes=2,
    )
    training = LocalTrainingConfig(epochs=1, learning_rate=0.05)
    clients = [
        FederatedClient(
            client_id,
            data.model_name,
            data.build(0),
            local,
            training,
            personal_prefixes=settings.personal_prefixes,
            fine_tuning=LocalTrainingConfig(epochs=1, learning_rate=0.05),
        )
        for client_id, local in data.training.items()
    ]
    version = _headless_version(shared_model_weights(data.build(0), HAR_CNN_HEAD))
    for client in clients:
        client.prepare_update(version)
    evaluator = demo._WithMeanPersonalLayers(HeldOutEvaluator(data.build(0), data.held_out), clients)
    assert evaluator.evaluate(version.parameters).count == 45  # a headless version, completed with the mean head

    results = demo._personalization(settings, clients, version)
    assert [result.client_id for result in results] == list(data.training)
    assert all(result.global_evaluation.count == 15 for result in results)
    lines = demo._personalization_lines(settings, results)
    assert lines[0] == "personalized : own classifier.* layers, fine-tuned 1 epoch(s) on own training data"
    assert "mean personal layers" in lines[1]
    assert "mean of 3" in lines[-1] and "points" in lines[-1]
    demo._write_personalization(results, tmp_path / "personalization.csv")
    with (tmp_path / "personalization.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["client_id"] for row in rows] == list(data.training)
    assert float(rows[0]["personalized_accuracy"]) == results[0].personalized_evaluation.accuracy


def test_the_summary_lists_at_most_30_devices_and_means_them_all() -> None:
    def result(index: int, global_accuracy: float, personal_accuracy: float) -> ClientPersonalization:
        return ClientPersonalization(
            f"subject-{index:02d}",
            Evaluation(loss=1.0, accuracy=global_accuracy, macro_f1=0.5, count=10),
            Evaluation(loss=0.5, accuracy=personal_accuracy, macro_f1=0.6, count=10),
        )

    results = [result(index, 0.5, 0.75) for index in range(40)]
    lines = demo._personalization_lines(DemoSettings(fine_tuning_epochs=2), results)
    assert lines[0] == "personalized : fine-tuned 2 epoch(s) on own training data"
    assert lines[1].endswith("own validation windows"), "no personal layers: the global model is the version"
    assert sum("subject-" in line for line in lines) == 30
    assert "10 more devices in personalization.csv" in lines[-2]
    assert lines[-1].split()[:3] == ["mean", "of", "40"]
    assert "50.0%" in lines[-1] and "75.0%" in lines[-1] and "(+25.0 points)" in lines[-1]


def test_the_head_the_demo_keeps_is_the_table_mlps_too() -> None:
    assert table_model((8,), 2, 0)[0] == "table-mlp"  # the demo's table MLP has the head HAR_CNN_HEAD names
    assert "classifier.weight" in dict(table_model((8,), 2, 0)[1].named_parameters())
