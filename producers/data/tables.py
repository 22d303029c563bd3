"""Bring your own table: a Parquet or CSV file with a subject (or silo) column, a label column and features.

Each distinct subject becomes one client. Preparation happens per client, as it would on the client:
missing values are imputed with that client's own training medians, features are standardized with that
client's own training mean and standard deviation, and none of those statistics leave the client.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "TableClient",
    "TableFormatError",
    "check_columns",
    "label_vocabulary",
    "prepare_client",
    "read_table",
    "standardize",
    "table_clients",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class TableFormatError(ValueError):
    """The table lacks a named column, or a column cannot be used as features or labels."""


@dataclass(frozen=True)
class TableClient:
    """One subject's or silo's data, ready to train on: int64 labels (n,) and float32 features.

    Features are rows (n, d) from :func:`table_clients`, or windows (n, channels, window) from
    :func:`producers.data.windows.window_clients`.
    """

    subject: Hashable
    train_features: FloatArray
    train_labels: IntArray
    validation_features: FloatArray
    validation_labels: IntArray
    feature_names: tuple[str, ...]


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a ``.parquet`` / ``.pq`` or ``.csv`` file into a data frame."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no table at {file}")
    suffix = file.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(file)
    if suffix == ".csv":
        return pd.read_csv(file)
    raise TableFormatError(f"table {file} must end in .parquet, .pq or .csv, got {suffix!r}")


def prepare_client(
    subject: Hashable,
    frame: pd.DataFrame,
    feature_columns: Sequence[str],
    labels: IntArray,
    *,
    validation_fraction: float,
    seed: int,
) -> TableClient:
    """Split one client's rows (stratified by label, seeded), impute and standardize on its training rows."""
    numeric = frame[list(feature_columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    rng = np.random.default_rng([seed, zlib.crc32(str(subject).encode())])
    validation_mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        positions = rng.permutation(np.flatnonzero(labels == label))
        validation_mask[positions[: round(validation_fraction * len(positions))]] = True
    if not (~validation_mask).any():
        raise TableFormatError(f"subject {subject!r} has no training rows after the split")
    standardized = standardize(numeric[~validation_mask], numeric, axes=(0,))
    return TableClient(
        subject=subject,
        train_features=standardized[~validation_mask],
        train_labels=labels[~validation_mask],
        validation_features=standardized[validation_mask],
        validation_labels=labels[validation_mask],
        feature_names=tuple(feature_columns),
    )


def standardize(
    train: npt.NDArray[np.float64], values: npt.NDArray[np.float64], *, axes: tuple[int, ...]
) -> FloatArray:
    """``values`` imputed and standardized with statistics of ``train`` alone, per feature (or channel).

    ``axes`` are the sample axes the statistics pool over: ``(0,)`` for rows (n, d), ``(0, 2)`` for windows
    (n, channels, window). Missing values (NaN) take the feature's training median; a feature this client never
    observed is 0, and a constant one keeps scale 1.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column this client never observed: all NaN
        medians = np.nanmedian(train, axis=axes, keepdims=True)
    medians = np.where(np.isnan(medians), 0.0, medians)
    filled_train = np.where(np.isnan(train), medians, train)
    mean = filled_train.mean(axis=axes, keepdims=True)
    std = filled_train.std(axis=axes, keepdims=True)
    std = np.where(std < 1e-6, 1.0, std)
    filled = np.where(np.isnan(values), medians, values)
    standardized: FloatArray = ((filled - mean) / std).astype(np.float32)
    return standardized


def check_columns(frame: pd.DataFrame, required: Sequence[str], feature_columns: Sequence[str] | None) -> list[str]:
    """The feature columns (default: every column not in ``required``), after checking every name exists.

    A :class:`TableFormatError` names each missing column, or each feature column that is not numeric.
    """
    if feature_columns is None:
        feature_columns = [column for column in frame.columns if column not in required]
    missing = [column for column in (*required, *feature_columns) if column not in frame.columns]
    if missing:
        raise TableFormatError(f"table lacks columns {missing}; it has {list(frame.columns)}")
    if not feature_columns:
        raise TableFormatError(f"no feature columns: name some, or give a table with columns besides {list(required)}")
    not_numeric = [
        column
        for column in feature_columns
        if not (pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column]))
    ]
    if not_numeric:
        raise TableFormatError(f"feature columns must be numeric or boolean, got non-numeric {not_numeric}")
    return list(feature_columns)


def label_vocabulary(frame: pd.DataFrame, label_column: str) -> tuple[Hashable, ...]:
    """The label values in sorted order: class ``k`` is the ``k``-th; the only thing clients share."""
    values = frame[label_column].dropna().unique()
    try:
        return tuple(sorted(values))
    except TypeError as error:
        raise TableFormatError(
            f"label column {label_column!r} mixes values that do not sort together: {error}"
        ) from None


def table_clients(
    table: pd.DataFrame | str | os.PathLike[str],
    *,
    subject_column: str,
    label_column: str,
    feature_columns: Sequence[str] | None = None,
    validation_fraction: float = 0.2,
    min_rows: int = 2,
    seed: int = 0,
) -> dict[Hashable, TableClient]:
    """One :class:`TableClient` per subject of ``table`` (a data frame or a Parquet/CSV path).

    ``feature_columns`` defaults to every column except the subject and label columns. Labels are mapped to
    class indices 0…k−1 in sorted order of their values across the whole table (the label vocabulary is
    the only thing shared). Rows with a missing label are dropped; subjects with fewer than ``min_rows``
    rows are left out.
    """
    frame = table if isinstance(table, pd.DataFrame) else read_table(table)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    feature_columns = check_columns(frame, (subject_column, label_column), feature_columns)
    frame = frame[frame[label_column].notna()]
    index = {value: position for position, value in enumerate(label_vocabulary(frame, label_column))}
    clients: dict[Hashable, TableClient] = {}
    for subject, rows in frame.groupby(subject_column, sort=True):
        if len(rows) < min_rows:
            continue
        labels = np.asarray([index[value] for value in rows[label_column]], dtype=np.int64)
        clients[subject] = prepare_client(
            subject, rows, feature_columns, labels, validation_fraction=validation_fraction, seed=seed
        )
    return clients
