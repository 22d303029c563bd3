"""The data readers, local training and the simulator work on a machine without ``kafka`` installed.

Only ``producers.transport`` talks to Kafka; the rest of the client library takes its transport from the caller.
Each check runs in a fresh interpreter where ``import kafka`` fails, as it does where kafka-python is absent.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

WITHOUT_KAFKA = "import sys\nsys.modules['kafka'] = None  # any import of kafka now raises ModuleNotFoundError\n"

KAFKA_FREE_MODULES = [
    "producers.data",
    "producers.data.hapt",
    "producers.data.hapt_archive",
    "producers.data.heart",
    "producers.data.tables",
    "producers.models",
    "producers.training",
    "producers.updates",
    "producers.evaluation",
    "producers.personalization",
    "producers.client",
    "producers.fleet",
    "simulation",
]


def _run_without_kafka(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_KAFKA + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_blocking_kafka_makes_its_import_fail() -> None:
    completed = _run_without_kafka("import producers.transport")
    assert completed.returncode != 0 and "import of kafka halted" in completed.stderr, "the guard must bite"


@pytest.mark.parametrize("module", KAFKA_FREE_MODULES)
def test_imports_without_kafka(module: str) -> None:
    completed = _run_without_kafka(f"import {module}")
    assert completed.returncode == 0, completed.stderr


def test_windows_and_local_training_run_without_kafka() -> None:
    completed = _run_without_kafka(
        """
        import numpy as np
        from producers.client import LocalData
        from producers.data.hapt import make_windows
        from producers.data.hapt_archive import HaptSession
        from producers.fleet import DeviceSpeeds
        from producers.models import build_model, model_weights
        from producers.training import LocalTrainingConfig, train_locally
        from producers.updates import model_delta

        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(1, 7, dtype=np.int64), 256)
        session = HaptSession(1, rng.standard_normal((labels.size, 6)).astype(np.float32), labels)
        windows, classes = make_windows(session, window=128, stride=64)
        data = LocalData(windows, classes, windows[:0], classes[:0])
        model = build_model("har-cnn", seed=0)
        start = model_weights(model)
        report = train_locally(model, data.train_features, data.train_labels, LocalTrainingConfig(epochs=1))
        delta = model_delta(model_weights(model), start)
        assert report.sample_count == len(classes) > 0 and set(delta) == set(start)
        assert len(DeviceSpeeds(seed=1).draw(4)) == 4
        assert "kafka" not in {name.split(".")[0] for name, mod in sys.modules.items() if mod is not None}
        """
    )
    assert completed.returncode == 0, completed.stderr
