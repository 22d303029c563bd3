"""Windows cut from a table of sensor samples: inside one subject, one recording and one label run, in order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from producers.data.tables import TableFormatError
from producers.data.windows import window_clients


def _samples(subjects: dict[str, list[tuple[int, str, int]]]) -> pd.DataFrame:
    """Rows of (subject, recording, t, label, value=subject code·1000 + recording·100 + t) from run specs.

    Each spec is (recording, label, length); ``t`` restarts at 0 in each recording and counts on across runs.
    """
    rows = []
    for code, (subject, runs) in enumerate(subjects.items()):
        clock: dict[int, int] = {}
        for recording, label, length in runs:
            for _ in range(length):
                t = clock.get(recording, 0)
                clock[recording] = t + 1
                value = 1000 * code + 100 * recording + t
                rows.append({"who": subject, "rec": recording, "t": t, "label": label, "v": value, "w": -value})
    return pd.DataFrame(rows)


def _is_contiguous(values: np.ndarray) -> bool:
    steps = np.diff(values)
    return bool(np.allclose(steps, steps[0]) and steps[0] > 0)


def _all_windows(client: object) -> np.ndarray:
    return np.concatenate([client.train_features, client.validation_features])  # type: ignore[attr-defined]


def test_windows_never_cross_a_label_change_a_recording_or_a_subject() -> None:
    # Naive cutting of 10-row windows every 10 rows over the whole table would straddle every boundary here.
    frame = _samples(
        {
            "a": [(0, "walk", 15), (0, "sit", 15), (1, "walk", 15)],
            "b": [(0, "sit", 15)],
        }
    )
    clients = window_clients(
        frame.sample(frac=1.0, random_state=0),  # the order column, not the row order, orders samples
        subject_column="who",
        label_column="label",
        order_column="t",
        sequence_column="rec",
        window=10,
        validation_fraction=0.0,
    )
    assert set(clients) == {"a", "b"}
    for client in clients.values():
        for window in client.train_features:
            assert _is_contiguous(window[0]), "one window is consecutive samples of one run"
    # a: one window per run (15 rows fit one 10-row window each), none spanning runs; b: one.
    assert clients["a"].train_features.shape == (3, 2, 10)
    assert sorted(clients["a"].train_labels.tolist()) == [0, 1, 1]  # classes: sit 0, walk 1
    assert clients["b"].train_labels.tolist() == [0]


def test_the_order_restarts_in_each_recording_and_recordings_are_not_joined() -> None:
    # Recording 1 restarts t at 0: without --sequence-column its t values repeat recording 0's.
    frame = _samples({"a": [(0, "walk", 8), (1, "walk", 8)]})
    with pytest.raises(
        TableFormatError, match=r"order column 't' repeats the value 0 within who 'a'.*--sequence-column"
    ):
        window_clients(frame, subject_column="who", label_column="label", order_column="t", window=4)
    clients = window_clients(
        frame,
        subject_column="who",
        label_column="label",
        order_column="t",
        sequence_column="rec",
        window=4,
        validation_fraction=0.0,
    )
    # 8 rows per recording, window 4, step 4: two windows each, never one made of the end of one and the
    # start of the other (which would be 16 rows as one run: 4 windows too, but one would straddle).
    assert clients["a"].train_features.shape == (4, 2, 4)
    for window in clients["a"].train_features:
        assert _is_contiguous(window[0])


def test_step_sets_the_overlap_and_the_window_count() -> None:
    frame = _samples({"a": [(0, "walk", 20)], "b": [(0, "walk", 20)]})
    for step, expected in ((10, 2), (5, 3), (2, 6), (1, 11), (20, 1)):
        clients = window_clients(
            frame,
            subject_column="who",
            label_column="label",
            order_column="t",
            window=10,
            step=step,
            validation_fraction=0.0,
        )
        assert len(clients["a"].train_labels) == expected, f"step {step}"
    default = window_clients(
        frame, subject_column="who", label_column="label", order_column="t", window=10, validation_fraction=0.0
    )
    assert len(default["a"].train_labels) == 2, "step defaults to the window: no overlap"


def test_validation_windows_share_no_sample_with_training_windows() -> None:
    frame = _samples({"a": [(0, "walk", 60), (0, "sit", 60)], "b": [(0, "walk", 30)]})
    clients = window_clients(
        frame,
        subject_column="who",
        label_column="label",
        order_column="t",
        window=10,
        step=2,  # heavily overlapping windows: a random split would leak samples
        feature_columns=["v"],
        validation_fraction=0.25,
    )
    client = clients["a"]
    assert len(client.validation_labels) > 0
    assert sorted(set(client.validation_labels.tolist())) == [0, 1], "every run validates on its own later part"
    # Standardization is one affine map per channel: equal standardized values are equal raw samples.
    train_values = {round(float(x), 4) for x in client.train_features[:, 0, :].ravel()}
    validation_values = {round(float(x), 4) for x in client.validation_features[:, 0, :].ravel()}
    assert not train_values & validation_values
    # And validation comes later in each run than training.
    for label in (0, 1):
        assert client.train_features[client.train_labels == label].max() < (
            client.validation_features[client.validation_labels == label].min()
        )


def test_each_channel_is_standardized_on_the_clients_training_windows_only() -> None:
    frame = _samples({"a": [(0, "walk", 40)], "b": [(0, "walk", 40)]})
    frame.loc[frame["who"] == "b", "w"] *= 50.0  # another client's scale must not matter
    clients = window_clients(
        frame,
        subject_column="who",
        label_column="label",
        order_column="t",
        feature_columns=["v", "w"],
        window=5,
        validation_fraction=0.25,
    )
    for client in clients.values():
        assert client.train_features.dtype == np.float32 and client.train_labels.dtype == np.int64
        train = client.train_features.astype(np.float64)
        np.testing.assert_allclose(train.mean(axis=(0, 2)), 0.0, atol=1e-5)
        np.testing.assert_allclose(train.std(axis=(0, 2)), 1.0, atol=1e-5)
    # a: 40 rows, 8 windows of 5, the last 2 validate: training rows t = 0..29, validation rows t = 30..39.
    client = clients["a"]
    assert client.train_features.shape == (6, 2, 5) and client.validation_features.shape == (2, 2, 5)
    mean, std = np.mean(np.arange(30)), np.std(np.arange(30))
    np.testing.assert_allclose(client.validation_features[0, 0], (np.arange(30, 35) - mean) / std, rtol=1e-5)
    np.testing.assert_allclose(client.validation_features[0, 1], -(np.arange(30, 35) - mean) / std, rtol=1e-5)
    assert client.feature_names == ("v", "w")


def test_missing_feature_values_take_the_clients_training_median() -> None:
    frame = _samples({"a": [(0, "walk", 20)], "b": [(0, "walk", 20)]}).astype({"v": float})
    frame.loc[3, "v"] = np.nan
    clients = window_clients(
        frame, subject_column="who", label_column="label", order_column="t", feature_columns=["v"], window=5
    )
    assert np.isfinite(clients["a"].train_features).all()


def test_a_subject_whose_runs_are_all_shorter_than_the_window_is_left_out_with_a_warning() -> None:
    frame = _samples({"a": [(0, "walk", 12)], "short": [(0, "walk", 3), (0, "sit", 3)]})
    with pytest.warns(UserWarning, match=r"left out subjects \['short'\] of column 'who'"):
        clients = window_clients(frame, subject_column="who", label_column="label", order_column="t", window=5)
    assert set(clients) == {"a"}


def test_a_window_longer_than_every_run_is_an_error_naming_the_columns() -> None:
    frame = _samples({"a": [(0, "walk", 6), (0, "sit", 6)], "b": [(0, "walk", 4)]})
    with pytest.raises(TableFormatError, match=r"'label' value in order of 't'.*the longest has 6 rows"):
        window_clients(frame, subject_column="who", label_column="label", order_column="t", window=7)


def test_rows_without_a_label_end_a_run_and_are_never_in_a_window() -> None:
    frame = _samples({"a": [(0, "walk", 12)], "b": [(0, "walk", 12)]})
    frame.loc[(frame["who"] == "a") & (frame["t"] == 5), "label"] = None
    clients = window_clients(
        frame, subject_column="who", label_column="label", order_column="t", window=5, validation_fraction=0.0
    )
    starts = sorted(float(window[0][0]) for window in clients["a"].train_features)
    assert len(starts) == 2, "rows 0-4 and 6-10: one window each side of the unlabelled row"


def test_timestamps_order_rows() -> None:
    frame = _samples({"a": [(0, "walk", 10)], "b": [(0, "walk", 10)]})
    frame["t"] = pd.Timestamp("2026-01-01") + pd.to_timedelta(frame["t"], unit="s")
    frame["t"] = frame["t"].astype(str)  # as a CSV would hold them: ISO text
    clients = window_clients(
        frame.iloc[::-1],
        subject_column="who",
        label_column="label",
        order_column="t",
        feature_columns=["v"],
        window=5,
        validation_fraction=0.0,
    )
    assert all(_is_contiguous(window[0]) for window in clients["a"].train_features)


@pytest.mark.parametrize(
    ("change", "options", "message"),
    [
        (None, {"order_column": "time"}, r"lacks columns \['time'\]"),
        (None, {"sequence_column": "session"}, r"lacks columns \['session'\]"),
        (None, {"feature_columns": ["v", "z"]}, r"lacks columns \['z'\]"),
        ("text_feature", {}, r"non-numeric \['note'\]"),
        ("text_order", {}, r"order column 't' is neither numeric nor timestamps"),
        ("missing_order", {}, r"order column 't' has 1 missing values"),
        ("duplicate_order", {}, r"order column 't' repeats the value 3 within who 'a'"),
        (None, {"window": 0}, r"window must be a positive number of rows, got 0"),
        (None, {"step": -1}, r"step must be a positive number of rows, got -1"),
        (None, {"feature_columns": ["t", "v"]}, r"column 't' cannot be a feature"),
        (None, {"order_column": "label"}, r"column 'label' is named for two roles"),
    ],
)
def test_each_error_names_its_column_and_the_problem(
    change: str | None, options: dict[str, object], message: str
) -> None:
    frame = _samples({"a": [(0, "walk", 10)], "b": [(0, "sit", 10)]})
    if change == "text_feature":
        frame["note"] = "x"
    elif change == "text_order":
        frame["t"] = "sample-" + frame["t"].astype(str)
    elif change == "missing_order":
        frame["t"] = frame["t"].astype(float)
        frame.loc[2, "t"] = np.nan
    elif change == "duplicate_order":
        frame.loc[4, "t"] = 3
    arguments: dict[str, object] = {
        "subject_column": "who",
        "label_column": "label",
        "order_column": "t",
        "window": 4,
        **options,
    }
    with pytest.raises(TableFormatError, match=message):
        window_clients(frame, **arguments)  # type: ignore[arg-type]
