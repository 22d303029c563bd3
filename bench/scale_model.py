"""Scale benchmark, the pure parts: what to run, the synthetic model of a size, the job's settings for it.

Nothing here starts a process or touches Kafka (``tests/unit/test_bench_scale.py`` covers it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from schemas.messages import Encoding
from schemas.tensors import Tensors

GIB = 2**30
FLOAT32_BYTES = 4
TENSOR_WIDTH = 1024
"""Columns of the synthetic model's weight matrices (rows make up the size; a bias takes the remainder)."""
WEIGHT_TENSORS = 3
DEFAULT_SIZES = (1_000_000, 10_000_000, 100_000_000)
QUICK_SIZES = (1_000_000, 10_000_000)
ENCODING_RUNS_UP_TO = 10_000_000
"""Sizes above this run the job in float32 only; other encodings' Kafka bytes are still computed."""


@dataclass(frozen=True)
class ScaleSettings:
    """What to run; the defaults are the issue's workload."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    encodings: tuple[Encoding, ...] = (Encoding.FLOAT32,)
    """Encodings the job is run with (float32 always first); every encoding's bytes are reported regardless."""
    buffer_size: int = 10
    versions: int = 3
    """Versions timed per size and encoding (the median is reported)."""
    batch_bytes_budget: int | None = None
    """The job's ``--batch-bytes-budget`` (None: its own default)."""
    driver_memory_gib: int | None = None
    """Spark driver memory for every size (None: :func:`driver_memory_gib` of the size)."""
    chunk_deadline_seconds: float = 3600.0
    trigger_seconds: float = 0.5
    stall_seconds: float = 600.0
    """A size fails when the job writes no batch status for this long while a version is awaited."""
    min_available_bytes: int = 2 * GIB
    """A size is stopped (and fails) when the machine's available memory falls below this."""
    port: int = 29092
    keep_state: bool = False
    executor_aggregation_min_parameters: int | None = None
    """The job's ``--executor-aggregation-min-parameters``: sizes of at least this many are made on executors."""

    def aggregated_on(self, parameters: int) -> str:
        """Where the job makes the versions of a model of ``parameters``: ``"executors"`` or ``"driver"``."""
        threshold = self.executor_aggregation_min_parameters
        return "executors" if threshold is not None and parameters >= threshold else "driver"

    def encodings_run_at(self, parameters: int) -> tuple[Encoding, ...]:
        """The encodings the job runs with at ``parameters``: float32 only above ``ENCODING_RUNS_UP_TO``."""
        if parameters > ENCODING_RUNS_UP_TO:
            return (Encoding.FLOAT32,)
        return self.encodings

    def check(self) -> None:
        """Raise ``ValueError`` for settings that cannot run."""
        if not self.sizes or any(size < 1 for size in self.sizes):
            raise ValueError(f"sizes must be positive, got {self.sizes}")
        if self.buffer_size < 1 or self.versions < 1:
            raise ValueError("buffer_size and versions must be at least 1")
        if not self.encodings or self.encodings[0] is not Encoding.FLOAT32:
            raise ValueError(f"the encodings must start with float32, got {[e.value for e in self.encodings]}")


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"1e6,10000000,100M"`` → ``(1000000, 10000000, 100000000)``: plain, scientific or with k/M/G."""
    factors = {"k": 10**3, "m": 10**6, "g": 10**9}
    sizes = []
    for item in text.split(","):
        item = item.strip().lower().replace("_", "")
        if not item:
            continue
        factor = factors.get(item[-1], 1)
        number = item[:-1] if item[-1] in factors else item
        sizes.append(int(float(number) * factor))
    return tuple(sizes)


def parse_encodings(text: str) -> tuple[Encoding, ...]:
    """``"float32,int8"`` → the encodings, float32 first (it is always run), each once."""
    named = [Encoding(item.strip()) for item in text.split(",") if item.strip()]
    return tuple(dict.fromkeys([Encoding.FLOAT32, *named]))


def size_label(parameters: int) -> str:
    """``1000000`` → ``"1M"``; ``2500`` → ``"2.5k"``."""
    for factor, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if parameters >= factor:
            return f"{parameters / factor:g}{suffix}"
    return str(parameters)


def model_name(parameters: int) -> str:
    """The benchmark model's name at a size (a valid fedstream identifier)."""
    return f"scale-{size_label(parameters).lower().replace('.', '-')}"


def model_layout(parameters: int) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape for a model of exactly ``parameters`` float32 values: a few dense layers and a bias.

    Three ``rows × 1024`` weight matrices of equal rows and a bias holding the rest, so a model is four
    tensors; a model smaller than three rows is one flat tensor.
    """
    if parameters < 1:
        raise ValueError(f"a model needs at least one parameter, got {parameters}")
    rows = parameters // (WEIGHT_TENSORS * TENSOR_WIDTH)
    if rows == 0:
        return {"dense_0.weight": (parameters,)}
    layout: dict[str, tuple[int, ...]] = {
        f"dense_{index}.weight": (rows, TENSOR_WIDTH) for index in range(WEIGHT_TENSORS)
    }
    rest = parameters - WEIGHT_TENSORS * rows * TENSOR_WIDTH
    if rest:
        layout["dense_head.bias"] = (rest,)
    return layout


def layout_parameters(layout: dict[str, tuple[int, ...]]) -> int:
    """Values in a layout."""
    return sum(math.prod(shape) for shape in layout.values())


def zeros(layout: dict[str, tuple[int, ...]]) -> Tensors:
    """Version 0 of the synthetic model: every parameter 0 (only the deltas' sizes matter here)."""
    return {name: np.zeros(shape, dtype=np.float32) for name, shape in layout.items()}


def random_delta(layout: dict[str, tuple[int, ...]], seed: int, scale: float = 1e-3) -> Tensors:
    """A small Gaussian delta of the layout (float32 drawn directly: no float64 copy of a large model)."""
    rng = np.random.default_rng(seed)
    delta: Tensors = {}
    for name, shape in layout.items():
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(scale)
        delta[name] = values
    return delta


def driver_memory_gib(update_bytes: int) -> int:
    """Spark driver heap for a model whose float32 update is ``update_bytes``: the job's 2 GiB and 16 updates more.

    The driver JVM holds an assembled update several times over while it goes to Delta (Arrow, rows, Parquet
    pages) beside a version being written and the held chunks being read back; 16 copies leaves room for that.
    """
    return max(2, round(2 + 16 * update_bytes / GIB))


def disk_bytes_needed(message_bytes_per_update: int, buffer_size: int, versions: int) -> int:
    """Disk one size's run fills: every update on ``fl.updates``, in ``update_chunks`` and ``updates``; the spool."""
    per_version = buffer_size * message_bytes_per_update
    return 3 * per_version * versions + per_version


_FAILURE_MARKS = (
    "OutOfMemoryError",
    "Java heap space",
    "MemoryError",
    "GC overhead limit",
    "Killed",
    "Error:",
    "Exception:",
)
"""What a job log's most telling line holds, most telling first."""


def failure_summary(log: str, returncode: int | None, while_doing: str) -> str:
    """The row's error for a job that exited: how it exited and its log's most telling line."""
    how = f"the job exited with {returncode}"
    if returncode is not None and returncode < 0:
        how += " (killed by a signal: -9 is the kernel's OOM killer or a SIGKILL)"
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for mark in _FAILURE_MARKS:
        found = next((line for line in lines if mark in line), None)
        if found is not None:
            return f"{how} while {while_doing}: {found[:300]}"
    return f"{how} while {while_doing}" + (f": {lines[-1][:300]}" if lines else "")
