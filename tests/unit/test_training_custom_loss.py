"""A custom loss (regression) in local training and evaluation; the default stays cross-entropy."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
import torch
import torch.nn.functional as functional
from torch import nn

from producers.client import FederatedClient, LocalData
from producers.models import model_weights
from producers.training import LocalTrainingConfig, evaluate, train_locally
from schemas.messages import ModelHeader
from schemas.wire import DecodedModel, DecodedUpdate, decode_update


def _regression(count: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    features = generator.normal(size=(count, 4)).astype(np.float32)
    heart_rate = features @ np.array([3.0, -2.0, 0.5, 1.0], dtype=np.float32) + 70.0
    return features, heart_rate.reshape(-1, 1).astype(np.float32)


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4, 1)


def test_a_regression_model_trains_with_mse_and_its_loss_goes_down() -> None:
    features, targets = _regression()
    model = _linear()
    config = LocalTrainingConfig(epochs=20, batch_size=16, learning_rate=0.01, loss=functional.mse_loss)
    before = evaluate(model, features, targets, loss=functional.mse_loss)
    start = model_weights(model)
    report = train_locally(model, features, targets, config)
    after = evaluate(model, features, targets, loss=functional.mse_loss)
    assert report.steps == 20 * 8 and report.samples_seen == 20 * 128 and math.isfinite(report.mean_loss)
    assert after.loss < before.loss / 10
    assert not before.has_accuracy and math.isnan(after.accuracy) and math.isnan(after.macro_f1)
    with torch.no_grad():
        expected = functional.mse_loss(model(torch.from_numpy(features)), torch.from_numpy(targets))
    assert after.loss == pytest.approx(float(expected), rel=1e-5)
    assert any(not np.array_equal(start[name], weights) for name, weights in model_weights(model).items())


def test_the_client_publishes_what_training_with_the_custom_loss_produced() -> None:
    features, targets = _regression()
    config = LocalTrainingConfig(epochs=3, batch_size=16, learning_rate=0.01, loss=functional.mse_loss)
    data = LocalData(features[:96], targets[:96], features[96:], targets[96:])
    client = FederatedClient("c-heart", "heart-rate", _linear(seed=1), data, config)
    base = model_weights(_linear(seed=2))
    header = ModelHeader(
        model_name="heart-rate",
        version=3,
        parent_version=2,
        parent_parameter_hash="ab" * 32,
        parameter_hash="cd" * 32,
        payload_sha256="ef" * 32,
        created_at=datetime.now(UTC),
    )
    prepared = client.prepare_update(DecodedModel(header=header, parameters=base))

    reference = _linear(seed=9)
    reference.load_state_dict({name: torch.from_numpy(value) for name, value in base.items()})
    report = train_locally(reference, features[:96], targets[:96], config, base)
    decoded = decode_update(prepared.value)
    assert isinstance(decoded, DecodedUpdate)
    for name, trained in model_weights(reference).items():
        np.testing.assert_array_equal(decoded.delta[name], trained - base[name])
    metrics = prepared.header.metrics
    assert metrics.validation_accuracy is None and metrics.validation_count == 32
    assert metrics.validation_loss is not None and metrics.training_loss == pytest.approx(report.mean_loss)


def _classification(count: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 3, size=count).astype(np.int64)
    features = generator.normal(size=(count, 5)).astype(np.float32)
    features[np.arange(count), labels] += 2.0
    return features, labels


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))


def test_the_default_loss_is_cross_entropy_bit_for_bit() -> None:
    features, labels = _classification()
    settings = {"epochs": 2, "batch_size": 10, "proximal_mu": 0.1, "seed": 4}
    default, explicit = _classifier(), _classifier()
    default_report = train_locally(default, features, labels, LocalTrainingConfig(**settings))
    explicit_config = LocalTrainingConfig(**settings, loss=functional.cross_entropy)
    explicit_report = train_locally(explicit, features, labels, explicit_config)
    assert default_report == explicit_report
    for name, weights in model_weights(default).items():
        np.testing.assert_array_equal(weights, model_weights(explicit)[name])
    assert LocalTrainingConfig().loss is None
    by_default = evaluate(default, features, labels)
    with_cross_entropy = evaluate(default, features, labels, loss=functional.cross_entropy)
    assert by_default.has_accuracy and with_cross_entropy.accuracy == by_default.accuracy
    assert with_cross_entropy.macro_f1 == by_default.macro_f1
    assert with_cross_entropy.loss == pytest.approx(by_default.loss, rel=1e-6)


def test_a_loss_must_be_callable_and_return_a_scalar() -> None:
    with pytest.raises(ValueError, match="loss must be None or a callable"):
        LocalTrainingConfig(loss="mse")  # type: ignore[arg-type]
    features, targets = _regression(count=16)
    per_sample = LocalTrainingConfig(loss=lambda outputs, wanted: (outputs - wanted) ** 2)
    with pytest.raises(ValueError, match="scalar tensor"):
        train_locally(_linear(), features, targets, per_sample)
    with pytest.raises(ValueError, match="targets must have 16 rows"):
        train_locally(_linear(), features, targets[:8], LocalTrainingConfig(loss=functional.mse_loss))


def test_personalization_scores_a_regression_with_the_fine_tuning_loss() -> None:
    from producers.personalization import evaluate_client

    features, targets = _regression()
    data = LocalData(features[:96], targets[:96], features[96:], targets[96:])
    model = _linear()
    config = LocalTrainingConfig(epochs=5, batch_size=16, learning_rate=0.01, loss=functional.mse_loss)
    comparison = evaluate_client(model, "c-1", model_weights(_linear(seed=3)), data, fine_tuning=config)
    assert comparison.personalized_evaluation.loss < comparison.global_evaluation.loss
    assert not comparison.global_evaluation.has_accuracy and math.isnan(comparison.gain)
