from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from producers.data.tables import TableFormatError, table_clients


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "site": ["a"] * 6 + ["b"] * 4 + ["c"],
            "x": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 10.0, 20.0, 30.0, 40.0, 0.0],
            "flag": [True, False] * 5 + [True],
            "y": ["no", "yes", "no", "yes", "no", "yes", "no", "yes", "no", "yes", "no"],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_one_client_per_subject_from_a_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"table{suffix}"
    frame = _frame()
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    clients = table_clients(path, subject_column="site", label_column="y", feature_columns=["x", "flag"], min_rows=2)
    assert sorted(clients) == ["a", "b"]  # "c" has one row
    a = clients["a"]
    assert len(a.train_labels) + len(a.validation_labels) == 6
    assert a.feature_names == ("x", "flag")
    assert set(np.concatenate([a.train_labels, a.validation_labels])) == {0, 1}  # "no" -> 0, "yes" -> 1
    assert np.isfinite(a.train_features).all() and np.isfinite(a.validation_features).all()
    assert abs(float(clients["b"].train_features[:, 0].mean())) < 1e-5  # standardized on b's own rows


def test_default_features_and_bad_columns() -> None:
    clients = table_clients(_frame(), subject_column="site", label_column="y", validation_fraction=0.0)
    assert clients["a"].feature_names == ("x", "flag")
    with pytest.raises(TableFormatError, match="lacks columns"):
        table_clients(_frame(), subject_column="hospital", label_column="y")
    with pytest.raises(TableFormatError, match="non-numeric"):
        table_clients(_frame(), subject_column="x", label_column="flag", feature_columns=["site"])
