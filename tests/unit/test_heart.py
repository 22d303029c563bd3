import numpy as np
import pytest

from producers.data.heart import (
    HEART_FEATURES,
    HEART_HOSPITALS,
    HeartDataUnavailableError,
    find_heart_csv,
    heart_frame,
    load_heart_silos,
)
from producers.models import available_models, build_model


@pytest.fixture(scope="module")
def available() -> None:
    try:
        find_heart_csv()
    except HeartDataUnavailableError as error:
        pytest.skip(str(error))


def test_rows_and_positives_per_hospital(available: None) -> None:
    frame = heart_frame()
    assert len(frame) == 920
    counts = frame.groupby("hospital")["label"].agg(["count", "sum"])
    assert counts.loc["Cleveland"].tolist() == [304, 139]
    assert counts.loc["Hungary"].tolist() == [293, 106]
    assert counts.loc["Switzerland"].tolist() == [123, 115]
    assert counts.loc["VA Long Beach"].tolist() == [200, 149]
    assert frame.loc[frame["hospital"] == "Switzerland", "chol"].isna().all()  # 0 marks unmeasured


def test_silos_are_standardized_on_their_own_training_rows(available: None) -> None:
    silos = load_heart_silos(validation_fraction=0.3, seed=0)
    assert tuple(silos) == HEART_HOSPITALS
    assert sum(len(s.train_labels) + len(s.validation_labels) for s in silos.values()) == 920
    for silo in silos.values():
        assert silo.train_features.shape[1] == len(HEART_FEATURES) == 22
        assert np.isfinite(silo.train_features).all() and np.isfinite(silo.validation_features).all()
        means = silo.train_features.mean(axis=0)
        assert np.abs(means).max() < 1e-4
    assert len(silos["Cleveland"].validation_labels) == 92


def test_split_is_deterministic_by_seed(available: None) -> None:
    first = load_heart_silos(seed=1)["Hungary"]
    again = load_heart_silos(seed=1)["Hungary"]
    other = load_heart_silos(seed=2)["Hungary"]
    np.testing.assert_array_equal(first.train_features, again.train_features)
    assert not np.array_equal(first.train_features, other.train_features)


def test_heart_mlp_is_registered() -> None:
    assert "heart-mlp" in available_models()
    import torch

    logits = build_model("heart-mlp", 0)(torch.zeros(3, len(HEART_FEATURES)))
    assert tuple(logits.shape) == (3, 2)
