"""Sensor time series from your own table: fixed-length windows per subject, for a model over windows.

The table holds one row per sample (say an accelerometer reading): a subject column, a label column, an
order column (a timestamp or sample index) and numeric channels. Within one subject, and one recording
where a sequence column says which (its order restarts in each), rows are put in order and cut into
windows of ``window`` rows every ``step`` rows. A window never spans two subjects, two recordings or a
change of label: windows are cut inside *runs*, the contiguous stretches of one label in order. Rows
without a label end a run and are never in a window.

Each client's split is by time within every run: the run's earlier rows make training windows, its later
rows validation windows, each part windowed on its own, so overlapping windows cannot leak a sample across
the split. Imputation and standardization use the client's own training windows only,
channel by channel (:func:`producers.data.tables.standardize`); nothing about a client's data leaves it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from producers.data.tables import (
    IntArray,
    TableClient,
    TableFormatError,
    check_columns,
    label_vocabulary,
    read_table,
    standardize,
)

__all__ = ["WindowColumns", "window_clients"]


@dataclass(frozen=True)
class WindowColumns:
    """The columns that place a row: whose it is, what it shows, when, and in which recording."""

    subject: str
    label: str
    order: str
    sequence: str | None = None

    def keys(self) -> tuple[str, ...]:
        """The column names, sequence included when there is one."""
        return (self.subject, self.label, self.order, *((self.sequence,) if self.sequence is not None else ()))


def window_clients(
    table: pd.DataFrame | str | os.PathLike[str],
    *,
    subject_column: str,
    label_column: str,
    order_column: str,
    window: int,
    step: int | None = None,
    sequence_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    validation_fraction: float = 0.2,
) -> dict[Hashable, TableClient]:
    """One :class:`TableClient` of windows per subject of ``table`` (a data frame or a Parquet/CSV path).

    Features are float32 windows (n, channels, window), one channel per feature column (default: every
    column but the subject, label, order and sequence columns); labels are int64 class indices in the
    sorted order of the label values across the table. ``step`` (default ``window``: no overlap) is the
    distance between window starts. A subject without a single training window is left out with a
    warning; a :class:`TableFormatError` says which column is at fault when the table cannot be windowed.
    The split is by time within each run, not random: nothing here takes a seed.
    """
    window = _positive("window", window)
    step = window if step is None else _positive("step", step)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    frame = table if isinstance(table, pd.DataFrame) else read_table(table)
    columns = WindowColumns(subject_column, label_column, order_column, sequence_column)
    _check_distinct(columns)
    features = check_columns(frame, columns.keys(), feature_columns)
    overlap = sorted(set(features) & set(columns.keys()))
    if overlap:
        raise TableFormatError(f"column {overlap[0]!r} cannot be a feature: it places rows (subject, label, order)")
    frame = _ordered(frame, columns)
    vocabulary = label_vocabulary(frame, label_column)
    # Class k is the k-th label value in sorted order; a row without a label gets -1 and ends a run.
    codes = pd.Categorical(frame[label_column], categories=list(vocabulary)).codes.astype(np.int64)
    frame = frame.assign(_fedstream_class=codes)
    clients: dict[Hashable, TableClient] = {}
    skipped: list[Hashable] = []
    for subject, rows in frame.groupby(subject_column, sort=True):
        client = _subject_client(subject, rows, columns, features, window, step, validation_fraction)
        if client is None:
            skipped.append(subject)
        else:
            clients[subject] = client
    if not clients:
        longest = _longest_run(frame, columns)
        raise TableFormatError(
            f"no windows: the window of {window} rows is longer than every run of one {label_column!r} value in "
            f"order of {order_column!r} within one {_within(columns)} (the longest has {longest} rows)"
        )
    if skipped:
        warnings.warn(
            f"left out subjects {skipped} of column {subject_column!r}: no run of one {label_column!r} value "
            f"is {window} rows long, so they have no training window",
            stacklevel=2,
        )
    return clients


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise TableFormatError(f"{name} must be a positive number of rows, got {value!r}")
    return int(value)


def _check_distinct(columns: WindowColumns) -> None:
    keys = columns.keys()
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise TableFormatError(f"column {repeated[0]!r} is named for two roles (subject, label, order, sequence)")


def _within(columns: WindowColumns) -> str:
    if columns.sequence is None:
        return f"{columns.subject!r}"
    return f"({columns.subject!r}, {columns.sequence!r})"


def _ordered(frame: pd.DataFrame, columns: WindowColumns) -> pd.DataFrame:
    """The rows sorted by subject, sequence and order, after checking those columns can place every row."""
    for name, column in (("subject", columns.subject), ("sequence", columns.sequence), ("order", columns.order)):
        if column is None:
            continue
        missing = int(frame[column].isna().sum())
        if missing:
            raise TableFormatError(f"{name} column {column!r} has {missing} missing values: every row needs one")
    order = _sortable_order(frame[columns.order], columns.order)
    frame = frame.assign(**{columns.order: order})
    group = [columns.subject, *((columns.sequence,) if columns.sequence is not None else ())]
    duplicated = frame.duplicated([*group, columns.order], keep=False)
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        place = ", ".join(f"{column} {_plain(first[column])!r}" for column in group)
        raise TableFormatError(
            f"order column {columns.order!r} repeats the value {_plain(first[columns.order])!r} within {place}: "
            f"rows cannot be ordered"
            + ("" if columns.sequence is not None else " (name the recording with --sequence-column if it restarts)")
        )
    try:
        return frame.sort_values([*group, columns.order], kind="mergesort")
    except TypeError as error:
        raise TableFormatError(f"the values of {group} do not sort together: {error}") from None


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, so messages show ``3``, not ``np.int64(3)``."""
    return value.item() if isinstance(value, np.generic) else value


def _sortable_order(values: pd.Series, column: str) -> pd.Series:
    """The order column as numbers or timestamps; text that is neither cannot order rows."""
    if pd.api.types.is_bool_dtype(values):
        raise TableFormatError(f"order column {column!r} is boolean: it needs a sample index or a timestamp")
    if (
        pd.api.types.is_numeric_dtype(values)
        or pd.api.types.is_datetime64_any_dtype(values)
        or pd.api.types.is_timedelta64_dtype(values)
    ):
        return values
    try:
        return pd.to_datetime(values, format="ISO8601")
    except (ValueError, TypeError):
        example = next(iter(values), None)
        raise TableFormatError(
            f"order column {column!r} is neither numeric nor timestamps (e.g. {example!r}): cannot order rows by it"
        ) from None


def _runs(rows: pd.DataFrame, columns: WindowColumns) -> tuple[IntArray, IntArray, IntArray]:
    """Start row, end row (exclusive) and class of each run: one recording, one label, contiguous in order."""
    classes = rows["_fedstream_class"].to_numpy()
    changes = classes[1:] != classes[:-1]
    if columns.sequence is not None:
        sequence = rows[columns.sequence].to_numpy()
        changes |= sequence[1:] != sequence[:-1]
    starts = np.flatnonzero(np.concatenate([[True], changes])).astype(np.int64)
    ends = np.append(starts[1:], len(rows)).astype(np.int64)
    return starts, ends, classes[starts].astype(np.int64)


def _longest_run(frame: pd.DataFrame, columns: WindowColumns) -> int:
    lengths = [
        int((ends - starts)[classes >= 0].max(initial=0))
        for _, rows in frame.groupby(columns.subject, sort=False)
        for starts, ends, classes in [_runs(rows, columns)]
    ]
    return max(lengths, default=0)


def _split_run(start: int, end: int, window: int, step: int, validation_fraction: float) -> tuple[IntArray, IntArray]:
    """Training and validation window starts of one run, which is cut in two: earlier rows train, later validate.

    The later part is just long enough for ``validation_fraction`` of the run's windows (rounded); each part
    is windowed on its own, so no row is in both. A run too short for both keeps every window for training.
    """
    count = (end - start - window) // step + 1
    validation_count = math.floor(count * validation_fraction + 0.5)
    cut = end - (window + (validation_count - 1) * step) if validation_count else end
    if cut - start < window:  # no training window would be left
        cut, validation_count = end, 0
    train = np.arange(start, cut - window + 1, step, dtype=np.int64)
    validation = cut + step * np.arange(validation_count, dtype=np.int64)
    return train, validation


def _subject_client(
    subject: Hashable,
    rows: pd.DataFrame,
    columns: WindowColumns,
    features: Sequence[str],
    window: int,
    step: int,
    validation_fraction: float,
) -> TableClient | None:
    """One subject's windows split and standardized; None when no run yields a training window."""
    run_starts, run_ends, run_classes = _runs(rows, columns)
    train_parts: list[tuple[IntArray, IntArray]] = []
    validation_parts: list[tuple[IntArray, IntArray]] = []
    for start, end, label in zip(run_starts, run_ends, run_classes, strict=True):
        if label < 0 or end - start < window:
            continue  # unlabelled rows, or a run too short for one window
        train, validation = _split_run(int(start), int(end), window, step, validation_fraction)
        train_parts.append((train, np.full(len(train), label, dtype=np.int64)))
        validation_parts.append((validation, np.full(len(validation), label, dtype=np.int64)))
    train_starts, train_labels = _joined(train_parts)
    if len(train_starts) == 0:
        return None
    validation_starts, validation_labels = _joined(validation_parts)
    values = rows[list(features)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    train_raw = _gather(values, train_starts, window)
    return TableClient(
        subject=subject,
        train_features=standardize(train_raw, train_raw, axes=(0, 2)),
        train_labels=train_labels,
        validation_features=standardize(train_raw, _gather(values, validation_starts, window), axes=(0, 2)),
        validation_labels=validation_labels,
        feature_names=tuple(features),
    )


def _joined(parts: list[tuple[IntArray, IntArray]]) -> tuple[IntArray, IntArray]:
    empty = np.empty(0, dtype=np.int64)
    return (
        np.concatenate([empty, *(starts for starts, _ in parts)]),
        np.concatenate([empty, *(labels for _, labels in parts)]),
    )


def _gather(values: npt.NDArray[np.float64], starts: IntArray, window: int) -> npt.NDArray[np.float64]:
    """Windows (m, channels, window) starting at ``starts``: channels first, as ``Conv1d`` expects."""
    offsets = starts[:, None] + np.arange(window, dtype=np.int64)[None, :]
    return np.ascontiguousarray(values[offsets].transpose(0, 2, 1))
