"""UCI HAPT as client data sets: windows of one activity, one time-ordered train/validation split per subject.

The recordings come from :mod:`producers.data.hapt_archive` (one :class:`HaptSession` per recording). Here
they are cut into fixed-length windows whose samples all carry one activity, split by time within each
session, and standardized with statistics of the subject's own training windows.

Everything here runs on the client: windows, splits and the per-client :class:`Standardizer` statistics
never leave it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from producers.data.hapt_archive import CHANNEL_NAMES, HaptSession, load_hapt_sessions

__all__ = [
    "ACTIVITY_NAMES",
    "ClientDataset",
    "LabelledWindows",
    "Standardizer",
    "load_hapt_clients",
    "make_windows",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

ACTIVITY_NAMES: tuple[str, ...] = (
    "walking",
    "walking upstairs",
    "walking downstairs",
    "sitting",
    "standing",
    "laying",
)
"""Class ``k`` (0–5) of a window is HAPT activity label ``k + 1``."""
_ACTIVITY_LABELS = range(1, len(ACTIVITY_NAMES) + 1)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    return int(value)


def _activity_window_starts(labels: IntArray, window: int, stride: int) -> tuple[IntArray, IntArray]:
    """Start sample and class (0–5) of every window whose samples all carry one activity label 1–6."""
    count = labels.shape[0]
    if count < window:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    starts = np.arange(0, count - window + 1, stride, dtype=np.int64)
    # changes[i] counts label changes in labels[:i + 1]; a window is uniform when none falls inside it.
    changes = np.concatenate([[0], np.cumsum(labels[1:] != labels[:-1])])
    uniform = changes[starts + window - 1] == changes[starts]
    first_labels = labels[starts]
    keep = uniform & (first_labels >= _ACTIVITY_LABELS.start) & (first_labels < _ACTIVITY_LABELS.stop)
    return starts[keep], (first_labels[keep] - 1).astype(np.int64)


def _gather_windows(signals: FloatArray, starts: IntArray, window: int) -> FloatArray:
    offsets = starts[:, None] + np.arange(window, dtype=np.int64)[None, :]
    # (m, window, channels) → (m, channels, window): channels first, as Conv1d expects.
    return np.ascontiguousarray(signals[offsets].transpose(0, 2, 1), dtype=np.float32)


def make_windows(session: HaptSession, window: int = 128, stride: int = 64) -> tuple[FloatArray, IntArray]:
    """Cut a session into windows of ``window`` samples every ``stride`` samples.

    Only windows whose samples all share one activity label 1–6 are kept (unlabelled stretches, posture
    transitions and windows that straddle two activities are dropped). Returns ``X`` float32
    (m, 6, window) and ``y`` int64 (m,) with classes 0–5 (see :data:`ACTIVITY_NAMES`). At 50 Hz the
    defaults are 2.56 s windows with 50 % overlap.
    """
    window = _check_positive_int("window", window)
    stride = _check_positive_int("stride", stride)
    starts, classes = _activity_window_starts(session.labels, window, stride)
    return _gather_windows(session.signals, starts, window), classes


@dataclass(frozen=True)
class LabelledWindows:
    """Windows with their classes and where each came from (session and first sample) on this client."""

    windows: FloatArray
    """float32 (m, channels, window)."""
    labels: IntArray
    """int64 (m,), classes 0–5."""
    session_indices: IntArray
    """int64 (m,), the subject's session each window was cut from."""
    starts: IntArray
    """int64 (m,), index of each window's first sample within its session."""

    def __post_init__(self) -> None:
        count = self.windows.shape[0]
        for name in ("labels", "session_indices", "starts"):
            shape = getattr(self, name).shape
            if shape != (count,):
                raise ValueError(f"{name} must have shape ({count},) to match the windows, got {shape}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> IntArray:
        """Number of windows of each class 0–5."""
        return np.bincount(self.labels, minlength=len(ACTIVITY_NAMES)).astype(np.int64)


@dataclass(frozen=True)
class Standardizer:
    """Per-channel mean and standard deviation, fitted on one client's training windows.

    The statistics describe one person's data: they stay on the client, are applied there, and never go
    into an update.
    """

    mean: FloatArray
    std: FloatArray

    @classmethod
    def fit(cls, windows: npt.ArrayLike, *, min_std: float = 1e-6) -> Standardizer:
        """Fit on windows of shape (m, channels, window); channels with std below ``min_std`` get ``min_std``."""
        data = np.asarray(windows)
        if data.ndim != 3 or data.shape[0] == 0:
            raise ValueError(f"fit needs a non-empty (m, channels, window) array, got shape {data.shape}")
        mean = data.mean(axis=(0, 2), dtype=np.float64)
        std = np.maximum(data.std(axis=(0, 2), dtype=np.float64), min_std)
        return cls(mean=mean.astype(np.float32), std=std.astype(np.float32))

    def transform(self, windows: npt.ArrayLike) -> FloatArray:
        """Standardize windows of shape (m, channels, window) channel by channel."""
        data = np.asarray(windows, dtype=np.float32)
        if data.ndim != 3 or data.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected windows of shape (m, {self.mean.shape[0]}, window), got shape {data.shape}")
        return ((data - self.mean[None, :, None]) / self.std[None, :, None]).astype(np.float32)


@dataclass(frozen=True)
class ClientDataset:
    """One subject's data as that subject's device holds it: a time-ordered train/validation split.

    Windows are split by time within each session (see :func:`load_hapt_clients`); no sample is in both
    splits. When ``standardizer`` is set, both splits are already standardized with it.
    """

    subject: int
    train: LabelledWindows
    validation: LabelledWindows
    standardizer: Standardizer | None = field(default=None, repr=False)


def _split_by_time(starts: IntArray, window: int, validation_fraction: float) -> tuple[IntArray, IntArray]:
    """Positions of the training and validation windows among windows with ascending ``starts``.

    The first ``1 − validation_fraction`` of the windows (rounded) train; of the rest, those overlapping
    the last training window are dropped.
    """
    count = starts.shape[0]
    train_count = min(count, math.floor(count * (1.0 - validation_fraction) + 0.5))
    positions = np.arange(count)
    if train_count == 0:
        return positions[:0], positions
    boundary = starts[train_count - 1] + window  # first sample after the last training window
    validation = positions[train_count:][starts[train_count:] >= boundary]
    return positions[:train_count], validation


def _split_session(
    starts: IntArray, classes: IntArray, window: int, validation_fraction: float, per_activity: bool
) -> tuple[IntArray, IntArray]:
    """Positions of one session's training and validation windows, each in time order."""
    if not per_activity:
        return _split_by_time(starts, window, validation_fraction)
    train_parts, validation_parts = [], []
    for activity in np.unique(classes):
        positions = np.flatnonzero(classes == activity)
        train, validation = _split_by_time(starts[positions], window, validation_fraction)
        train_parts.append(positions[train])
        validation_parts.append(positions[validation])
    empty = np.empty(0, dtype=np.int64)
    return (
        np.sort(np.concatenate([empty, *train_parts])),
        np.sort(np.concatenate([empty, *validation_parts])),
    )


def _concatenate(parts: list[tuple[HaptSession, IntArray, IntArray]], window: int, channels: int) -> LabelledWindows:
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return LabelledWindows(np.empty((0, channels, window), dtype=np.float32), empty, empty, empty)
    return LabelledWindows(
        windows=np.concatenate([_gather_windows(s.signals, starts, window) for s, starts, _ in parts]),
        labels=np.concatenate([classes for _, _, classes in parts]),
        session_indices=np.concatenate(
            [np.full(starts.shape[0], s.session_index, dtype=np.int64) for s, starts, _ in parts]
        ),
        starts=np.concatenate([starts for _, starts, _ in parts]),
    )


def load_hapt_clients(
    window: int = 128,
    stride: int = 64,
    *,
    validation_fraction: float = 0.2,
    split_per_activity: bool = True,
    subjects: Iterable[int] | None = None,
    standardize: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[int, ClientDataset]:
    """One :class:`ClientDataset` per HAPT subject (the natural non-IID split), keyed by subject 1–30.

    Each session is windowed with :func:`make_windows`'s rule and split by time: the first
    ``1 − validation_fraction`` of the windows (in time order) train, the rest validate, and windows that
    overlap the last training window are dropped, so no sample is in both splits.

    With ``split_per_activity`` (the default) that rule is applied to each activity's windows within each
    session. Every HAPT session follows the same protocol (postures first, walking, then stairs last), so
    splitting a session's windows as one sequence would leave validation with only the two stairs classes;
    per activity, each class validates on its own later stretch of the session. Windows of different
    activities never share samples, so the splits stay disjoint in time. ``split_per_activity=False``
    splits each session's windows as one sequence.

    With ``standardize`` (the default) each client gets a :class:`Standardizer` fitted on its own training
    windows only and applied to both of its splits.
    """
    window = _check_positive_int("window", window)
    stride = _check_positive_int("stride", stride)
    if not isinstance(validation_fraction, float | int) or not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be in [0, 1), got {validation_fraction!r} ({type(validation_fraction).__name__})"
        )
    sessions = load_hapt_sessions(cache_dir)
    known = sorted({s.subject for s in sessions})
    wanted = known if subjects is None else sorted(set(subjects))
    unknown = [subject for subject in wanted if subject not in known]
    if unknown:
        raise ValueError(f"unknown HAPT subjects {unknown}; subjects are {known[0]}–{known[-1]}")
    clients: dict[int, ClientDataset] = {}
    for subject in wanted:
        train_parts: list[tuple[HaptSession, IntArray, IntArray]] = []
        validation_parts: list[tuple[HaptSession, IntArray, IntArray]] = []
        for session in (s for s in sessions if s.subject == subject):
            starts, classes = _activity_window_starts(session.labels, window, stride)
            train, validation = _split_session(starts, classes, window, float(validation_fraction), split_per_activity)
            train_parts.append((session, starts[train], classes[train]))
            validation_parts.append((session, starts[validation], classes[validation]))
        train_set = _concatenate(train_parts, window, len(CHANNEL_NAMES))
        validation_set = _concatenate(validation_parts, window, len(CHANNEL_NAMES))
        standardizer = None
        if standardize:
            standardizer = Standardizer.fit(train_set.windows)
            train_set = _standardized(train_set, standardizer)
            validation_set = _standardized(validation_set, standardizer)
        clients[subject] = ClientDataset(subject, train_set, validation_set, standardizer)
    return clients


def _standardized(data: LabelledWindows, standardizer: Standardizer) -> LabelledWindows:
    return LabelledWindows(
        windows=standardizer.transform(data.windows),
        labels=data.labels,
        session_indices=data.session_indices,
        starts=data.starts,
    )
