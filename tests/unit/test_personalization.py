import numpy as np
import pytest

from producers.client import LocalData
from producers.models import build_model, model_weights
from producers.personalization import (
    HAR_CNN_HEAD,
    check_prefixes,
    evaluate_client,
    merge_weights,
    split_weights,
)
from producers.training import LocalTrainingConfig


def test_split_keeps_the_head_on_the_client_and_merge_restores_it() -> None:
    weights = model_weights(build_model("har-cnn", 0))
    shared, personal = split_weights(weights, HAR_CNN_HEAD)
    assert personal and all(name.startswith("classifier.") for name in personal)
    assert not any(name.startswith("classifier.") for name in shared)
    merged = merge_weights(shared, personal)
    assert set(merged) == set(weights)
    with pytest.raises(ValueError, match="overlap"):
        merge_weights(shared, shared)


def test_prefixes_must_match_and_leave_something_shared() -> None:
    names = list(model_weights(build_model("har-cnn", 0)))
    check_prefixes(names, HAR_CNN_HEAD)
    with pytest.raises(ValueError, match="match no parameter"):
        check_prefixes(names, ("head.",))
    with pytest.raises(ValueError, match="nothing is shared"):
        check_prefixes(names, ("features.", "classifier."))


def test_fine_tuning_changes_the_personalized_model_only() -> None:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((40, 6, 32)).astype(np.float32)
    labels = (features[:, 0].mean(axis=1) > 0).astype(np.int64)
    data = LocalData(features[:30], labels[:30], features[30:], labels[30:])
    model = build_model("har-cnn", 0)
    weights = model_weights(model)
    same = evaluate_client(model, "c", weights, data)
    assert same.gain == 0.0
    tuned = evaluate_client(model, "c", weights, data, fine_tuning=LocalTrainingConfig(epochs=3, learning_rate=0.05))
    assert tuned.global_evaluation == same.global_evaluation
    assert tuned.personalized_evaluation.loss != same.personalized_evaluation.loss
