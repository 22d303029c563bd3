"""A version exported as TorchScript or ONNX predicts what the torch module with its parameters predicts.

Each test builds the reference module on its own (``build_model`` + ``load_model_weights``) from known
parameters, so a file exported with the wrong weights, the wrong architecture or a batch dimension frozen at
the example's size fails. Tolerance: 1e-5 absolute plus 1e-4 relative on float32 logits (the exporters may
reorder a convolution's sums; a wrong weight moves logits by far more).
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from fedstream import cli
from fedstream.export import EXPORT_FORMATS, INPUT_SHAPES, architectures, example_input, export_model
from producers.models import build_model, load_model_weights, model_weights
from schemas.tensors import decode_tensors, encode_tensors
from streaming_jobs.settings import JobSettings

ATOL, RTOL = 1e-5, 1e-4
ARCHITECTURES = ["har-cnn", "heart-mlp"]


def _known_parameters(architecture: str, seed: int = 11) -> bytes:
    """Parameters of ``architecture`` that no exporter builds by itself (seed 11, not the builder's seed 0)."""
    return encode_tensors(model_weights(build_model(architecture, seed=seed)))


def _reference(architecture: str, parameters: bytes) -> torch.nn.Module:
    module = build_model(architecture, seed=0)
    load_model_weights(module, decode_tensors(parameters))
    return module.eval()


def _inputs(architecture: str, batch: int = 5) -> np.ndarray:
    """A batch of another size than the exporters' example (2), and other values."""
    rng = np.random.default_rng(2024)
    return (rng.standard_normal((batch, *INPUT_SHAPES[architecture])) * 1.5).astype(np.float32)


def _expected(architecture: str, parameters: bytes, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        result: np.ndarray = _reference(architecture, parameters)(torch.from_numpy(inputs)).numpy()
    return result


def _predict_file(export_format: str, path: Path, inputs: np.ndarray) -> np.ndarray:
    if export_format == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")
            loaded = torch.jit.load(str(path))
        with torch.no_grad():
            result: np.ndarray = loaded(torch.from_numpy(inputs)).numpy()
        return result
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [item.name for item in session.get_inputs()] == ["input"]
    outputs: list[np.ndarray] = session.run(["logits"], {"input": inputs})
    return outputs[0]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("export_format", EXPORT_FORMATS)
def test_an_exported_file_predicts_what_the_torch_module_predicts(
    tmp_path: Path, export_format: str, architecture: str
) -> None:
    parameters = _known_parameters(architecture)
    path = export_model(parameters, architecture, export_format, tmp_path / "nested" / f"model.{export_format}")
    inputs = _inputs(architecture)
    predicted = _predict_file(export_format, path, inputs)
    expected = _expected(architecture, parameters, inputs)
    assert predicted.shape == expected.shape == (5, expected.shape[1])
    np.testing.assert_allclose(predicted, expected, atol=ATOL, rtol=RTOL)
    # the file carries these parameters, not the architecture's initial ones
    assert not np.allclose(predicted, _expected(architecture, _known_parameters(architecture, seed=0), inputs))


def test_export_refuses_what_it_cannot_export(tmp_path: Path) -> None:
    parameters = _known_parameters("har-cnn")
    with pytest.raises(ValueError, match="'pickle'"):
        export_model(parameters, "har-cnn", "pickle", tmp_path / "model")
    with pytest.raises(ValueError, match=r"unknown model architecture 'resnet'.*har-cnn"):
        export_model(parameters, "resnet", "torchscript", tmp_path / "model")
    with pytest.raises(ValueError, match="weights do not fit"):
        export_model(_known_parameters("heart-mlp"), "har-cnn", "torchscript", tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_input_shapes_are_what_the_clients_train_on() -> None:
    from producers.data.hapt import make_windows
    from producers.data.heart import HEART_FEATURES

    assert set(architectures()) <= set(INPUT_SHAPES), "every architecture needs an example input shape"
    assert INPUT_SHAPES["heart-mlp"] == (len(HEART_FEATURES),)
    window = inspect.signature(make_windows).parameters["window"].default
    assert INPUT_SHAPES["har-cnn"] == (build_model("har-cnn", seed=0).features[0].in_channels, window)
    example = example_input("har-cnn")
    assert example.dtype == np.float32
    assert example.shape == (2, 6, window)


def test_the_export_command_reads_the_version_and_writes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parameters = _known_parameters("har-cnn")
    asked: list[tuple[str, int]] = []

    def read_version(spark: object, locations: object, model_name: str, version: int) -> bytes:
        asked.append((model_name, version))
        if version != 3:
            raise LookupError(f"model {model_name!r} has no version {version}")
        return parameters

    monkeypatch.setattr(cli, "_tables", lambda args: (None, None))
    monkeypatch.setattr("fedstream.export.read_version_parameters", read_version)
    out = tmp_path / "har.pt"
    assert cli.main(["export", "3", "--format", "torchscript", "--out", str(out)]) == 0
    inputs = _inputs("har-cnn")
    np.testing.assert_allclose(
        _predict_file("torchscript", out, inputs), _expected("har-cnn", parameters, inputs), atol=ATOL, rtol=RTOL
    )
    missing = tmp_path / "missing.onnx"
    assert cli.main(["export", "4", "--format", "onnx", "--out", str(missing), "--architecture", "har-cnn"]) == 2
    assert asked == [("har-cnn", 3), ("har-cnn", 4)]
    assert not missing.exists()


def test_the_job_setting_names_a_known_architecture() -> None:
    assert JobSettings(model_architecture="har-cnn").model_architecture == "har-cnn"
    assert JobSettings().model_architecture is None
    with pytest.raises(ValidationError, match="unknown model architecture 'har_cnn'"):
        JobSettings(model_architecture="har_cnn")
    args = cli.parse_job_arguments(["--model-architecture", "heart-mlp"])
    assert cli.job_settings(args).model_architecture == "heart-mlp"
    assert cli.job_settings(cli.parse_job_arguments([])).model_architecture is None
