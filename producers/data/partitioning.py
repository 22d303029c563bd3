"""Dirichlet label skew: split a pooled labelled set into clients whose class mixes differ, for experiments.

For each class, the class's samples are shared among the clients in proportions drawn from
``Dirichlet(alpha, …, alpha)``: small ``alpha`` (0.1) gives clients dominated by one or two classes, large
``alpha`` (100) nearly identical mixes. The split is deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["dirichlet_label_skew", "label_distribution"]

IntArray = npt.NDArray[np.int64]


def dirichlet_label_skew(
    labels: npt.ArrayLike, client_count: int, alpha: float, *, seed: int = 0, min_samples: int = 1
) -> list[IntArray]:
    """Indices into ``labels`` for each of ``client_count`` clients (disjoint, covering every sample).

    Redraws (up to 100 times, seeded) until every client has at least ``min_samples`` samples.
    """
    label_array = np.asarray(labels)
    if label_array.ndim != 1 or not np.issubdtype(label_array.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {label_array.shape} {label_array.dtype}")
    if isinstance(client_count, bool) or not isinstance(client_count, int) or client_count < 1:
        raise ValueError(f"client_count must be an int >= 1, got {client_count!r}")
    if not alpha > 0 or not np.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if client_count * min_samples > label_array.shape[0]:
        raise ValueError(
            f"{label_array.shape[0]} samples cannot give {client_count} clients {min_samples} samples each"
        )
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[IntArray]] = [[] for _ in range(client_count)]
        for label in np.unique(label_array):
            positions = rng.permutation(np.flatnonzero(label_array == label))
            shares = rng.dirichlet(np.full(client_count, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * positions.shape[0]).astype(np.int64)
            for client, chunk in enumerate(np.split(positions, cuts)):
                parts[client].append(chunk.astype(np.int64))
        clients = [np.sort(np.concatenate(chunks)) for chunks in parts]
        if min(client.shape[0] for client in clients) >= min_samples:
            return clients
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split in 100 draws gave every one of {client_count} clients "
        f"{min_samples} samples; raise alpha or lower min_samples"
    )


def label_distribution(labels: npt.ArrayLike, parts: list[IntArray], class_count: int) -> npt.NDArray[np.float64]:
    """Per client, the fraction of its samples in each class: shape (clients, class_count)."""
    label_array = np.asarray(labels)
    counts = np.stack([np.bincount(label_array[part], minlength=class_count) for part in parts]).astype(np.float64)
    distribution: npt.NDArray[np.float64] = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    return distribution
