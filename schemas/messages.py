"""The headers of fedstream's two Kafka messages: a client's update and a new global model version.

Headers are small, strict and free of free text: identifiers match tight patterns, metrics are numbers,
and unknown fields are refused (``extra="forbid"``), so no personal data can ride along.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

SCHEMA_VERSION: Literal[1] = 1

IDENTIFIER_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,63}$"
Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
"""A pseudonymous client id or a model name: lower-case letters, digits, '.', '_' and '-'; at most 64."""
UpdateId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
"""A 128-bit random id as 32 lower-case hex digits, chosen by the client once per update."""
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


MAX_LONG = 2**63 - 1
"""Largest value of a Delta ``LONG`` column; counters and versions are bounded by it."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


EARLIEST_TIMESTAMP: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP: Final = datetime(9999, 12, 30, tzinfo=UTC)
"""Timestamps in headers lie in this range: every instant in it is a valid UTC ``datetime`` and Delta timestamp."""


def _in_utc(moment: datetime) -> datetime:
    # An offset with seconds would be rounded when serialised; UTC keeps the instant exact. Near year 1 or
    # 9999 the conversion itself leaves datetime's range (OverflowError), so the range is checked first.
    if not EARLIEST_TIMESTAMP <= moment <= LATEST_TIMESTAMP:
        raise ValueError(
            f"{moment.isoformat()} is outside {EARLIEST_TIMESTAMP.isoformat()} .. {LATEST_TIMESTAMP.isoformat()}"
        )
    return moment.astimezone(UTC)


MAX_CHUNKS: Final = 1024
"""Most chunks one update or model version may have (each names its SHA-256 in the signed header)."""
MAX_TENSORS: Final = 4096
MAX_DIMENSIONS: Final = 8
TENSOR_NAME_PATTERN: Final = r"^[A-Za-z0-9_.:/-]{1,256}$"
TensorName = Annotated[str, Field(pattern=TENSOR_NAME_PATTERN)]
"""A tensor name in a chunk layout: a model's parameter name (``state_dict`` names fit)."""


class Encoding(StrEnum):
    """How a chunked payload stores each float32 value."""

    FLOAT32 = "float32"
    """4 bytes, little-endian: exact."""
    FLOAT16 = "float16"
    """2 bytes, little-endian IEEE half precision: values beyond ±65504 cannot be sent this way."""
    INT8 = "int8"
    """Per chunk: a little-endian float32 scale, then one signed byte per value (value = byte × scale)."""


class TensorShape(_Strict):
    """One tensor of a chunked payload: its name and shape, in the order the flat vector holds them."""

    name: TensorName
    shape: Annotated[list[Annotated[int, Field(strict=True, ge=0, le=2**31)]], Field(max_length=MAX_DIMENSIONS)]


class ChunkLayout(_Strict):
    """How a payload too large for one Kafka message is cut: part of the signed header of every chunk.

    The payload is the tensors' values, flattened in ``tensors`` order (each tensor in C order), then cut into
    chunks of ``chunk_elements`` values (the last may hold fewer), each encoded with ``encoding``. Chunk ``i``'s
    body hashes to ``chunk_sha256[i]``; the header's ``payload_sha256`` is :func:`schemas.chunks.chunks_root` of
    that list, so the signature covers every chunk, and each chunk can be checked on its own as it arrives.
    """

    encoding: Encoding
    tensors: Annotated[list[TensorShape], Field(min_length=1, max_length=MAX_TENSORS)]
    chunk_elements: Annotated[int, Field(strict=True, gt=0, le=2**31)]
    chunk_sha256: Annotated[list[Sha256Hex], Field(min_length=1, max_length=MAX_CHUNKS)]

    @model_validator(mode="after")
    def _consistent(self) -> ChunkLayout:
        names = [tensor.name for tensor in self.tensors]
        if len(set(names)) != len(names):
            raise ValueError("tensor names repeat")
        total = self.total_elements
        if total == 0:
            raise ValueError("the tensors hold no values")
        expected = -(-total // self.chunk_elements)
        if len(self.chunk_sha256) != expected:
            raise ValueError(
                f"{total} values in chunks of {self.chunk_elements} make {expected} chunks, "
                f"the layout names {len(self.chunk_sha256)}"
            )
        return self

    @property
    def total_elements(self) -> int:
        """Values in the whole payload."""
        return sum(_product(tensor.shape) for tensor in self.tensors)

    @property
    def chunk_count(self) -> int:
        """How many chunks the payload has."""
        return len(self.chunk_sha256)

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        """The ``[start, stop)`` range of flat values chunk ``index`` holds."""
        if not 0 <= index < self.chunk_count:
            raise IndexError(f"chunk {index} of {self.chunk_count}")
        start = index * self.chunk_elements
        return start, min(start + self.chunk_elements, self.total_elements)


def _product(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


class ClientMetrics(_Strict):
    """What a client measured: the received global model on its own validation split, then its training."""

    validation_loss: FiniteFloat | None = None
    validation_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    validation_count: Annotated[int, Field(strict=True, ge=0, le=MAX_LONG)] = 0
    training_loss: FiniteFloat | None = None
    training_steps: Annotated[int, Field(strict=True, ge=0, le=MAX_LONG)] = 0


class UpdateHeader(_Strict):
    """Header of one client update on ``fl.updates``; the payload is ``Δ = θ_local − θ_base`` as safetensors."""

    schema_version: Literal[1] = SCHEMA_VERSION
    update_id: UpdateId
    client_id: Identifier
    model_name: Identifier
    base_version: Annotated[int, Field(strict=True, ge=0, le=MAX_LONG)]
    sample_count: Annotated[int, Field(strict=True, gt=0, le=MAX_LONG)]
    created_at: AwareDatetime
    payload_sha256: Sha256Hex
    metrics: ClientMetrics = ClientMetrics()
    layout: ChunkLayout | None = None
    """Set on a chunked update only (``schemas.chunks``); a whole ``FSU1`` message has none."""

    _created_at_in_utc = field_validator("created_at")(_in_utc)


class ModelHeader(_Strict):
    """Header of one global model version on ``fl.models``; the payload is θ as safetensors.

    ``parent_parameter_hash`` is the parent's ``parameter_hash``: a client holding the parent checks that a new
    version chains to it. The job signs the header (see ``schemas.wire``), so both hashes are the job's word.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    model_name: Identifier
    version: Annotated[int, Field(strict=True, ge=0, le=MAX_LONG)]
    parent_version: Annotated[int, Field(strict=True, ge=0, le=MAX_LONG)] | None
    parent_parameter_hash: Sha256Hex | None
    parameter_hash: Sha256Hex
    payload_sha256: Sha256Hex
    created_at: AwareDatetime
    update_count: Annotated[int, Field(strict=True, ge=0)] = 0
    layout: ChunkLayout | None = None
    """Set on a chunked version only (``schemas.chunks``, always float32); a whole ``FSM2`` message has none."""
    cohort_fraction: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    """Set when this version opens a synchronous round: who trains on it (``schemas.cohorts.in_cohort``)."""

    _created_at_in_utc = field_validator("created_at")(_in_utc)

    @model_serializer(mode="wrap")
    def _without_unset_cohort(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # A version that opens no round is sent without the key, so its bytes are those written before rounds.
        data: dict[str, object] = handler(self)
        if self.cohort_fraction is None:
            data.pop("cohort_fraction", None)
        return data

    @model_validator(mode="after")
    def _parent_is_older_and_named_by_hash(self) -> ModelHeader:
        if (self.parent_version is None) != (self.parent_parameter_hash is None):
            raise ValueError(
                f"parent_version {self.parent_version!r} and parent_parameter_hash "
                f"{self.parent_parameter_hash!r} must both be given or both be null"
            )
        if self.parent_version is not None and self.parent_version >= self.version:
            raise ValueError(f"parent_version {self.parent_version} is not older than version {self.version}")
        return self
