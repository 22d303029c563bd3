"""A global version as a model people can run: a torch module, a TorchScript file or an ONNX file.

A version is a safetensors file of named float32 tensors (``model_versions.parameters``); it becomes a model
once it is loaded into the architecture that made it (a ``producers.models.build_model`` name). Everything
here is pure (no Spark, no MLflow) except :func:`read_version_parameters`, which the ``fedstream export``
command uses to fetch a version from Delta. torch is imported on first use, never with this module.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from torch import nn

    from streaming_jobs.tables import TableLocations

ExportFormat = Literal["torchscript", "onnx"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("torchscript", "onnx")

INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    # HAPT windows (producers.data.hapt.make_windows): 6 channels (accelerometer and gyroscope x, y, z), 128 samples.
    "har-cnn": (6, 128),
    # The 22 standardized features of producers.data.heart.HEART_FEATURES.
    "heart-mlp": (22,),
}
"""Shape of one input (without the batch dimension) of each architecture, as its clients train it."""

EXAMPLE_BATCH = 2
"""Rows in an example input: more than one, so that exporters keep the batch dimension dynamic."""

ONNX_PACKAGES = ("onnx", "onnxscript")
"""What ``torch.onnx.export`` (the torch.export-based exporter) needs: ``pip install 'fedstream[export]'``."""


def architectures() -> tuple[str, ...]:
    """Architecture names :func:`build_module` accepts (``producers.models`` plus ``heart-mlp`` when pandas is there).

    Raises ImportError naming the fix when torch is not installed.
    """
    try:
        from producers.models import available_models
    except ImportError as error:
        raise ImportError(
            f"a model architecture needs torch, which is not installed ({error}): pip install 'fedstream[client]'"
        ) from error
    with contextlib.suppress(ImportError):  # registers heart-mlp; needs pandas
        import producers.data.heart  # noqa: F401
    return available_models()


def check_architecture(architecture: str) -> str:
    """``architecture`` itself when :func:`build_module` can build it; a ValueError naming those it can otherwise."""
    known = architectures()
    if architecture not in known:
        raise ValueError(f"unknown model architecture {architecture!r}; known architectures: {', '.join(known)}")
    if architecture not in INPUT_SHAPES:
        raise ValueError(
            f"model architecture {architecture!r} has no known input shape; add it to fedstream.export.INPUT_SHAPES"
        )
    return architecture


def build_module(architecture: str, parameters: bytes | Mapping[str, np.ndarray]) -> nn.Module:
    """The ``architecture`` module with ``parameters`` (safetensors bytes or named arrays) loaded, in eval mode.

    A ValueError lists every tensor that does not fit (missing, unexpected, wrong shape, not finite).
    """
    from producers.models import build_model, load_model_weights
    from schemas.tensors import decode_tensors

    check_architecture(architecture)
    weights = decode_tensors(bytes(parameters)) if isinstance(parameters, bytes | bytearray) else parameters
    module = build_model(architecture, seed=0)
    load_model_weights(module, weights)
    return module.eval()


def example_input(architecture: str, batch: int = EXAMPLE_BATCH, seed: int = 0) -> np.ndarray:
    """A float32 input of ``batch`` rows for ``architecture``: standard normal, as clients standardize their data."""
    shape = INPUT_SHAPES[check_architecture(architecture)]
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def export_model(
    parameters: bytes | Mapping[str, np.ndarray], architecture: str, export_format: str, path: Path
) -> Path:
    """Write the ``architecture`` model with ``parameters`` to ``path`` as TorchScript or ONNX; returns ``path``.

    Both take inputs of any batch size (the other dimensions are :data:`INPUT_SHAPES`') and return logits.
    TorchScript is ``torch.jit.script`` (load with ``torch.jit.load``); ONNX has one input ``input`` and one
    output ``logits`` (load with onnxruntime) and needs the ``export`` extra.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}")
    if export_format == "onnx":
        missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'fedstream[export]'")
    import torch

    module = build_module(architecture, parameters)
    path.parent.mkdir(parents=True, exist_ok=True)
    if export_format == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
            torch.jit.save(torch.jit.script(module), str(path))
        return path
    example = torch.from_numpy(example_input(architecture))
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
        external_data=False,  # one self-contained file (these models are far below protobuf's 2 GB limit)
    )
    return path


def read_version_parameters(spark: SparkSession, locations: TableLocations, model_name: str, version: int) -> bytes:
    """Version ``version`` of ``model_name``'s parameters (safetensors bytes) from the ``model_versions`` table."""
    from pyspark.sql import functions as F  # noqa: N812

    from streaming_jobs.tables import MODEL_VERSIONS

    rows = (
        locations.read(spark, MODEL_VERSIONS)
        .where((F.col("model_name") == model_name) & (F.col("version") == version))
        .select("parameters")
        .collect()
    )
    if not rows:
        raise LookupError(f"model {model_name!r} has no version {version} in {locations.identifier(MODEL_VERSIONS)}")
    return bytes(rows[0].parameters)
