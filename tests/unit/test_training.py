import numpy as np
import pytest
import torch
from torch import nn

from producers.data.hapt import load_hapt_clients
from producers.models import (
    available_models,
    build_model,
    load_model_weights,
    model_weights,
    parameter_count,
)
from producers.training import Evaluation, LocalTrainingConfig, evaluate, train_locally


def _synthetic(count: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 6, size=count)
    features = generator.normal(size=(count, 6, 128)).astype(np.float32)
    features[np.arange(count), labels, :] += 1.0  # learnable: the channel of the class is shifted
    return features, labels.astype(np.int64)


def _distance(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((first[name] - second[name]) ** 2) for name in first)))


# --- models ----------------------------------------------------------------------------------------


def test_har_cnn_has_about_100k_parameters_and_the_right_output() -> None:
    model = build_model("har-cnn", seed=0)
    assert 80_000 <= parameter_count(model) <= 120_000
    assert model(torch.zeros(3, 6, 128)).shape == (3, 6)
    assert not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


def test_build_model_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = model_weights(build_model("har-cnn", seed=7))
    assert torch.equal(torch.rand(1), expected_next)
    second = model_weights(build_model("har-cnn", seed=7))
    other = model_weights(build_model("har-cnn", seed=8))
    assert all(np.array_equal(first[name], second[name]) for name in first)
    assert not all(np.array_equal(first[name], other[name]) for name in first)


def test_build_model_rejects_unknown_names() -> None:
    assert "har-cnn" in available_models()
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*har-cnn"):
        build_model("nope", seed=0)


def test_model_weights_round_trip() -> None:
    source, target = build_model("har-cnn", seed=1), build_model("har-cnn", seed=2)
    weights = model_weights(source)
    assert list(weights) == list(source.state_dict())
    assert all(array.dtype == np.float32 for array in weights.values())
    load_model_weights(target, weights)
    loaded = model_weights(target)
    assert all(np.array_equal(weights[name], loaded[name]) for name in weights)
    inputs = torch.randn(4, 6, 128)
    with torch.no_grad():
        assert torch.equal(source(inputs), target(inputs))
    # The arrays are copies: changing them does not change the model.
    weights["classifier.2.bias"] += 1.0
    assert not np.array_equal(model_weights(source)["classifier.2.bias"], weights["classifier.2.bias"])


def test_load_model_weights_reports_every_problem_and_changes_nothing() -> None:
    model = build_model("har-cnn", seed=1)
    before = model_weights(model)
    weights = model_weights(build_model("har-cnn", seed=2))
    del weights["classifier.2.bias"]
    weights["features.0.weight"] = np.zeros((2, 2), dtype=np.float32)
    weights["extra.weight"] = np.zeros(3, dtype=np.float32)
    weights["classifier.0.bias"] = np.full(64, np.nan, dtype=np.float32)
    with pytest.raises(ValueError) as raised:
        load_model_weights(model, weights)
    message = str(raised.value)
    for fragment in ("classifier.2.bias", "features.0.weight", "(2, 2)", "extra.weight", "NaN"):
        assert fragment in message
    after = model_weights(model)
    assert all(np.array_equal(before[name], after[name]) for name in before)


# --- training --------------------------------------------------------------------------------------


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError) as raised:
        LocalTrainingConfig(epochs=0, batch_size=-1, learning_rate=0.0, optimizer="rmsprop", proximal_mu=-1)  # type: ignore[arg-type]
    for name in ("epochs", "batch_size", "learning_rate", "optimizer", "proximal_mu"):
        assert name in str(raised.value)


def test_training_is_deterministic_and_counts_steps() -> None:
    features, labels = _synthetic()
    config = LocalTrainingConfig(epochs=3, max_steps=5, batch_size=16, seed=3)
    first, second = build_model("har-cnn", seed=0), build_model("har-cnn", seed=0)
    report = train_locally(first, features, labels, config)
    train_locally(second, features, labels, config)
    assert report.steps == 5 and report.samples_seen == 80 and report.sample_count == 96
    assert np.isfinite(report.mean_loss)
    first_weights, second_weights = model_weights(first), model_weights(second)
    assert all(np.array_equal(first_weights[name], second_weights[name]) for name in first_weights)


def test_training_restores_threads_and_mode() -> None:
    features, labels = _synthetic(32)
    model = build_model("har-cnn", seed=0)
    model.eval()
    threads = torch.get_num_threads()
    train_locally(model, features, labels, LocalTrainingConfig(max_steps=1, num_threads=1))
    assert torch.get_num_threads() == threads
    assert not model.training


def test_training_checks_its_inputs() -> None:
    features, labels = _synthetic(32)
    model = build_model("har-cnn", seed=0)
    with pytest.raises(ValueError, match="shape"):
        train_locally(model, features, labels[:-1], LocalTrainingConfig())
    with pytest.raises(ValueError, match="out of range"):
        train_locally(model, features, labels + 6, LocalTrainingConfig())
    with pytest.raises(ValueError, match="global_weights"):
        train_locally(model, features, labels, LocalTrainingConfig(proximal_mu=1.0), global_weights={})


def test_fedprox_keeps_weights_closer_to_the_start() -> None:
    features, labels = _synthetic(128)
    start = model_weights(build_model("har-cnn", seed=0))
    distances = {}
    for mu in (0.0, 1.0):
        model = build_model("har-cnn", seed=0)
        config = LocalTrainingConfig(epochs=3, batch_size=16, learning_rate=0.05, proximal_mu=mu, seed=1)
        train_locally(model, features, labels, config)
        distances[mu] = _distance(model_weights(model), start)
    assert distances[1.0] < 0.8 * distances[0.0]


def test_fedprox_anchor_defaults_to_the_starting_weights() -> None:
    features, labels = _synthetic(64)
    config = LocalTrainingConfig(epochs=1, batch_size=16, proximal_mu=1.0, seed=1)
    implicit, explicit = build_model("har-cnn", seed=0), build_model("har-cnn", seed=0)
    train_locally(implicit, features, labels, config)
    train_locally(explicit, features, labels, config, global_weights=model_weights(build_model("har-cnn", seed=0)))
    first, second = model_weights(implicit), model_weights(explicit)
    assert all(np.allclose(first[name], second[name], atol=1e-6) for name in first)


def test_evaluate_computes_accuracy_and_macro_f1() -> None:
    class Echo(nn.Module):
        """Returns its input's first time step as the logits."""

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return inputs[:, :, 0]

    predicted = np.array([0, 0, 1, 1, 2, 2])
    actual = np.array([0, 1, 1, 1, 2, 0])
    features = np.eye(3, dtype=np.float32)[predicted][:, :, None] * 10.0
    result = evaluate(Echo(), features, actual)
    assert isinstance(result, Evaluation) and result.count == 6
    assert result.accuracy == pytest.approx(4 / 6)
    # F1 per class: 0 → 1/2 (tp 1, fp 1, fn 1), 1 → 4/5 (tp 2, fp 0, fn 1), 2 → 2/3 (tp 1, fp 1, fn 0).
    assert result.macro_f1 == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert result.loss > 0


def test_local_training_learns_one_subjects_activities(tmp_path_factory: pytest.TempPathFactory) -> None:
    client = load_hapt_clients(subjects=[1], cache_dir=tmp_path_factory.mktemp("hapt-cache"))[1]
    model = build_model("har-cnn", seed=0)
    before = evaluate(model, client.validation.windows, client.validation.labels)
    reports = [
        train_locally(model, client.train.windows, client.train.labels, LocalTrainingConfig(epochs=1, seed=epoch))
        for epoch in range(5)
    ]
    after = evaluate(model, client.validation.windows, client.validation.labels)
    assert reports[-1].mean_loss < reports[0].mean_loss
    assert after.loss < before.loss
    assert after.accuracy > 0.5  # chance is 1/6
    assert after.macro_f1 > 0.4
