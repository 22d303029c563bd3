import numpy as np
import pytest

from producers.data.partitioning import dirichlet_label_skew, label_distribution

LABELS = np.repeat(np.arange(6), 200)


def test_same_seed_same_split_and_every_sample_once() -> None:
    first = dirichlet_label_skew(LABELS, 8, 0.5, seed=3)
    again = dirichlet_label_skew(LABELS, 8, 0.5, seed=3)
    other = dirichlet_label_skew(LABELS, 8, 0.5, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert np.array_equal(np.sort(np.concatenate(first)), np.arange(LABELS.size))


def test_small_alpha_skews_labels_and_large_alpha_does_not() -> None:
    skewed = label_distribution(LABELS, dirichlet_label_skew(LABELS, 10, 0.1, seed=0), 6)
    even = label_distribution(LABELS, dirichlet_label_skew(LABELS, 10, 1000.0, seed=0), 6)
    assert skewed.max(axis=1).mean() > 0.6
    assert even.max(axis=1).mean() < 0.25


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_label_skew(LABELS, 4, 0.0)
    with pytest.raises(ValueError, match="client_count"):
        dirichlet_label_skew(LABELS, 0, 1.0)
