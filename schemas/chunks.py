"""Chunked messages: updates and global versions larger than one Kafka message, cut to fit stock limits.

A chunk message is ``magic | header length | JSON header | signature | chunk index | body``: ``magic`` is
``FUC1`` (a chunk of an update) or ``FMC1`` (a chunk of a global version), the header length and the chunk
index big-endian uint32, the signature 64 bytes. The header is the update's (or version's) whole header with
its :class:`~schemas.messages.ChunkLayout`, byte for byte the same in every chunk, and the signature is over
``magic + JSON header`` as for a whole message. The layout names every chunk body's SHA-256 and the header's
``payload_sha256`` is :func:`chunks_root` of them, so one signature covers the whole payload while each chunk
is checked on its own as it arrives, in any order, duplicates included.

Bodies hold flat float32 values (the tensors in layout order, each in C order) in the layout's encoding. A
chunk boundary falls on a value, never inside one, so the same chunk index of every update of one model holds
the same parameters: what lets chunks be summed shard by shard.

Decoding never raises on bad input: it returns a :class:`~schemas.rejections.Rejection`.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from schemas.messages import MAX_CHUNKS, ChunkLayout, Encoding, ModelHeader, TensorShape, UpdateHeader
from schemas.rejections import Rejection, RejectionReason
from schemas.tensors import Tensors, encode_tensors, sha256_hex
from schemas.wire import SIGNATURE_BYTES, UNSIGNED, DecodedModel, DecodedUpdate, Signer, parse_header

UPDATE_CHUNK_MAGIC: Final = b"FUC1"
MODEL_CHUNK_MAGIC: Final = b"FMC1"
MAX_CHUNK_HEADER_BYTES: Final = 192 * 1024
"""A chunk's header names up to 1024 chunk hashes and 4096 tensors, so it may exceed a whole message's 64 KiB."""
CHUNK_KEY_SEPARATOR: Final = "/"
"""``fl.models`` keys of a chunked version are ``model_name/index`` (a model name never holds ``/``)."""

_U32: Final = struct.Struct(">I")
_PREFIX_BYTES: Final = len(UPDATE_CHUNK_MAGIC) + _U32.size
_SCALE: Final = struct.Struct("<f")
_FLOAT16_MAX: Final = 65504.0
_FLOAT32_MAX: Final = float(np.finfo(np.float32).max)
_INT8_PEAK: Final = 127
_BYTES_PER_VALUE: Final = {Encoding.FLOAT32: 4, Encoding.FLOAT16: 2, Encoding.INT8: 1}
_DTYPES: Final[dict[Encoding, np.dtype[np.floating[Any]]]] = {
    Encoding.FLOAT32: np.dtype("<f4"),
    Encoding.FLOAT16: np.dtype("<f2"),
}
"""Little-endian dtypes of the float encodings (int8 bodies are a scale and bytes)."""
_HASH_JSON_BYTES: Final = 64 + 2 + 1
"""One hash in the layout's JSON list: 64 hex digits, quotes and a comma."""
_SIZE_MARGIN: Final = 256
"""Slack for JSON details the size estimate does not model exactly."""

_Header = TypeVar("_Header", UpdateHeader, ModelHeader)


@dataclass(frozen=True)
class _Chunk(Generic[_Header]):
    """What every decoded chunk holds: its signed header, its index and its body (hash already checked)."""

    header: _Header
    index: int
    body: bytes
    signature: bytes
    signed_bytes: bytes
    """The chunk magic and the header JSON: what ``signature`` signs."""

    @property
    def layout(self) -> ChunkLayout:
        """The header's layout (always present on a decoded chunk)."""
        return _layout_of(self.header)

    @property
    def assembly_id(self) -> str:
        """SHA-256 (hex) of ``signed_bytes + signature``: chunks of one message share it, a forgery does not."""
        return sha256_hex(self.signed_bytes + self.signature)


@dataclass(frozen=True)
class UpdateChunk(_Chunk[UpdateHeader]):
    """One well-formed chunk of an update (its signature is checked by the job's client registry)."""

    def as_unassembled_update(self) -> DecodedUpdate:
        """A :class:`DecodedUpdate` with this chunk's header and signature and no tensors: to check who signed."""
        return DecodedUpdate(
            header=self.header, delta={}, payload=b"", signature=self.signature, signed_bytes=self.signed_bytes
        )


@dataclass(frozen=True)
class ModelChunk(_Chunk[ModelHeader]):
    """One well-formed chunk of a global version (hash checked, signature not: only the reader has the key)."""


def _layout_of(header: UpdateHeader | ModelHeader) -> ChunkLayout:
    if header.layout is None:  # decoding refuses such a header; only a hand-built chunk can get here
        raise ValueError("the chunk's header has no layout")
    return header.layout


def chunks_root(chunk_sha256: Sequence[str]) -> str:
    """The ``payload_sha256`` of a chunked payload: SHA-256 over the chunks' 32-byte digests in order."""
    return hashlib.sha256(b"".join(bytes.fromhex(digest) for digest in chunk_sha256)).hexdigest()


def is_update_chunk(value: bytes | None) -> bool:
    """True when ``value`` starts with the update-chunk magic (it may still be malformed)."""
    return value is not None and value[: len(UPDATE_CHUNK_MAGIC)] == UPDATE_CHUNK_MAGIC


def is_model_chunk(value: bytes | None) -> bool:
    """True when ``value`` starts with the model-chunk magic (it may still be malformed)."""
    return value is not None and value[: len(MODEL_CHUNK_MAGIC)] == MODEL_CHUNK_MAGIC


def chunk_elements_for(
    tensors: Mapping[str, npt.NDArray[np.float32]], encoding: Encoding, max_message_bytes: int, header_bytes: int
) -> int:
    """Values per chunk so that every chunk message of these tensors fits ``max_message_bytes``.

    ``header_bytes`` is the JSON header's size without its layout; the layout's own size (its tensor list and
    one hash per chunk) is accounted here. Raises ``ValueError`` when not even one value fits, or when the
    tensors need more than ``MAX_CHUNKS`` chunks at this limit.
    """
    shapes = _shapes(tensors)
    total = sum(math.prod(shape.shape) for shape in shapes)
    if total == 0:
        raise ValueError("the tensors hold no values")
    tensors_json = len(json.dumps([shape.model_dump() for shape in shapes], separators=(",", ":")).encode())
    # The layout grows with the chunk count and the chunk count with the layout: start from one chunk and
    # re-size until the count the size allows is no more than the count the size was estimated for.
    estimated_chunks = 1
    while True:
        layout_json = _layout_json_bytes(encoding, tensors_json, estimated_chunks)
        room = max_message_bytes - _chunk_overhead(header_bytes + layout_json) - _SIZE_MARGIN
        elements = min(_values_that_fit(encoding, room), total, 2**31)
        if elements < 1:
            # more chunks mean a longer hash list in every chunk: past some count nothing is left for values
            raise ValueError(
                f"{total} values do not fit chunks of at most {max_message_bytes} bytes: with "
                f"{estimated_chunks} chunks the {header_bytes}-byte header and {layout_json}-byte layout leave no room"
            )
        needed = -(-total // elements)
        if needed <= estimated_chunks:
            return elements
        if estimated_chunks >= MAX_CHUNKS:
            raise ValueError(f"{total} values need more than {MAX_CHUNKS} chunks of at most {max_message_bytes} bytes")
        estimated_chunks = min(needed, MAX_CHUNKS)


def _layout_json_bytes(encoding: Encoding, tensors_json: int, chunk_count: int) -> int:
    # ``,"layout":{"encoding":"...","tensors":[...],"chunk_elements":N,"chunk_sha256":["...",...]}`` with N
    # at its widest (10 digits), as pydantic writes it (compact, ASCII: tensor names are ASCII).
    skeleton = json.dumps(
        {"encoding": encoding.value, "tensors": [], "chunk_elements": 2**31, "chunk_sha256": []},
        separators=(",", ":"),
    )
    return len(',"layout":') + len(skeleton) - 2 + tensors_json + chunk_count * _HASH_JSON_BYTES


def _chunk_overhead(header_json_bytes: int) -> int:
    """Bytes of a chunk message besides its body."""
    return _PREFIX_BYTES + header_json_bytes + SIGNATURE_BYTES + _U32.size


def _values_that_fit(encoding: Encoding, body_bytes: int) -> int:
    if encoding is Encoding.INT8:
        body_bytes -= _SCALE.size
    return max(body_bytes, 0) // _BYTES_PER_VALUE[encoding]


def _body_bytes(encoding: Encoding, values: int) -> int:
    return values * _BYTES_PER_VALUE[encoding] + (_SCALE.size if encoding is Encoding.INT8 else 0)


def encode_chunk_bodies(
    tensors: Mapping[str, npt.NDArray[np.float32]], encoding: Encoding, chunk_elements: int
) -> tuple[ChunkLayout, list[bytes]]:
    """The layout (tensors in name order) and the encoded bodies of ``tensors`` cut every ``chunk_elements``.

    Name order, whatever the mapping's: every update of a model then has the same layout, so chunk ``i`` of each
    holds the same parameters (and a version encoded twice gives the same bytes). Raises ``ValueError`` for a
    value the encoding cannot carry (non-finite, or beyond float16's range).
    """
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements {chunk_elements} is not positive")
    tensors = {name: tensors[name] for name in sorted(tensors)}
    shapes = _shapes(tensors)
    flat = _flatten(tensors)
    if flat.size == 0:
        raise ValueError("the tensors hold no values")
    chunk_count = -(-flat.size // chunk_elements)
    if chunk_count > MAX_CHUNKS:
        raise ValueError(f"{flat.size} values in chunks of {chunk_elements} make {chunk_count} > {MAX_CHUNKS} chunks")
    _check_encodable(flat, encoding)
    bodies = [
        _encode_body(flat[start : start + chunk_elements], encoding) for start in range(0, flat.size, chunk_elements)
    ]
    layout = ChunkLayout(
        encoding=encoding,
        tensors=shapes,
        chunk_elements=chunk_elements,
        chunk_sha256=[sha256_hex(body) for body in bodies],
    )
    return layout, bodies


def _shapes(tensors: Mapping[str, npt.NDArray[np.float32]]) -> list[TensorShape]:
    # np.shape, not the flattened copy's: a 0-d tensor has shape [] and must come back 0-d.
    return [TensorShape(name=name, shape=[int(size) for size in np.shape(array)]) for name, array in tensors.items()]


def _flatten(tensors: Mapping[str, npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    parts = [np.ascontiguousarray(array, dtype=np.float32).reshape(-1) for array in tensors.values()]
    if not parts:
        return np.empty(0, dtype=np.float32)
    return np.concatenate(parts)


def _check_encodable(flat: npt.NDArray[np.float32], encoding: Encoding) -> None:
    if not np.isfinite(flat).all():
        raise ValueError(f"{encoding.value} chunks carry finite values only: the tensors hold NaN or infinity")
    if encoding is Encoding.FLOAT16:
        peak = float(np.max(np.abs(flat)))
        if peak > _FLOAT16_MAX:
            raise ValueError(f"|value| {peak} exceeds float16's largest, {_FLOAT16_MAX}")


def _encode_body(values: npt.NDArray[np.float32], encoding: Encoding) -> bytes:
    if encoding is not Encoding.INT8:
        return values.astype(_DTYPES[encoding]).tobytes()
    scale = _int8_scale(values)
    if scale == 0:
        quantised = np.zeros(values.size, dtype=np.int8)
    else:
        ratios = values.astype(np.float64) / float(scale)
        quantised = np.clip(np.rint(ratios), -_INT8_PEAK, _INT8_PEAK).astype(np.int8)
    return _SCALE.pack(scale) + quantised.tobytes()


def _int8_scale(values: npt.NDArray[np.float32]) -> float:
    """The float32 scale for int8 values: max|x| / 127, nudged so the peak needs no more than ±127."""
    peak = float(np.max(np.abs(values)))
    scale = np.float32(peak / _INT8_PEAK)
    if float(scale) * _INT8_PEAK < peak:  # rounded down (or to zero for a tiny peak): the peak would clip
        scale = np.nextafter(scale, np.float32(np.inf))
    if float(scale) * _INT8_PEAK > _FLOAT32_MAX:  # 127 × scale would decode to infinity
        scale = np.nextafter(scale, np.float32(0))
    return float(scale)


def decode_chunk_body(layout: ChunkLayout, index: int, body: bytes) -> npt.NDArray[np.float32] | Rejection:
    """Chunk ``index``'s float32 values, or why ``body`` cannot be them (length, scale); never raises."""
    try:
        problem = _body_problem(layout, index, body)
        if problem is not None:
            return problem
        return _decode_body(layout.encoding, body)
    except Exception as error:  # a hand-built layout or body must not crash the batch that holds it
        return _unexpected(error)


def _body_problem(layout: ChunkLayout, index: int, body: bytes) -> Rejection | None:
    """Why ``body`` cannot be chunk ``index`` of ``layout`` (index, length, int8 scale), without decoding it."""
    if not 0 <= index < layout.chunk_count:
        return Rejection(RejectionReason.MALFORMED_ENVELOPE, f"chunk index {index} of {layout.chunk_count} chunks")
    start, stop = layout.chunk_bounds(index)
    expected = _body_bytes(layout.encoding, stop - start)
    if len(body) != expected:
        return Rejection(
            RejectionReason.MALFORMED_PAYLOAD,
            f"chunk {index} body is {len(body)} bytes, {stop - start} {layout.encoding.value} values need {expected}",
        )
    if layout.encoding is Encoding.INT8:
        (scale,) = _SCALE.unpack_from(body)
        if not (math.isfinite(scale) and scale >= 0):
            return Rejection(
                RejectionReason.MALFORMED_PAYLOAD, f"chunk {index} int8 scale {scale!r} is not finite and >= 0"
            )
    return None


def _decode_body(encoding: Encoding, body: bytes) -> npt.NDArray[np.float32]:
    if encoding is not Encoding.INT8:
        return np.frombuffer(body, dtype=_DTYPES[encoding]).astype(np.float32)
    scale = np.float32(_SCALE.unpack_from(body)[0])
    quantised = np.frombuffer(body, dtype=np.int8, offset=_SCALE.size)
    with np.errstate(over="ignore"):  # a huge scale may overflow; the job's finiteness check rejects that later
        return quantised.astype(np.float32) * scale


def _unexpected(error: Exception) -> Rejection:
    return Rejection(RejectionReason.MALFORMED_PAYLOAD, f"{type(error).__name__}: {error}"[:300])


def encode_update_chunks(
    header: UpdateHeader,
    delta: Mapping[str, npt.NDArray[np.float32]],
    *,
    max_message_bytes: int,
    encoding: Encoding = Encoding.FLOAT32,
    signer: Signer | None = None,
) -> list[bytes]:
    """The update as chunk messages in index order, each at most ``max_message_bytes``, signed by ``signer``.

    The header's ``layout`` and ``payload_sha256`` are set here (whatever ``header`` holds there is replaced).
    Raises ``ValueError`` when the delta cannot be sent so (see :func:`chunk_elements_for`,
    :func:`encode_chunk_bodies`) or the signer does not return 64 bytes.
    """
    return _encode_chunks(UPDATE_CHUNK_MAGIC, header, delta, encoding, max_message_bytes, signer)


def encode_model_chunks(
    header: ModelHeader,
    parameters: Mapping[str, npt.NDArray[np.float32]],
    *,
    max_message_bytes: int,
    signer: Signer | None = None,
) -> list[bytes]:
    """A global version as float32 chunk messages in index order, each at most ``max_message_bytes``."""
    return _encode_chunks(MODEL_CHUNK_MAGIC, header, parameters, Encoding.FLOAT32, max_message_bytes, signer)


def _encode_chunks(
    magic: bytes,
    header: _Header,
    tensors: Mapping[str, npt.NDArray[np.float32]],
    encoding: Encoding,
    max_message_bytes: int,
    signer: Signer | None,
) -> list[bytes]:
    header_bytes = len(header.model_dump_json(exclude={"layout"}).encode())
    chunk_elements = chunk_elements_for(tensors, encoding, max_message_bytes, header_bytes)
    layout, bodies = encode_chunk_bodies(tensors, encoding, chunk_elements)
    prefix = _signed_prefix(magic, header, layout, signer)
    messages = [prefix + _U32.pack(index) + body for index, body in enumerate(bodies)]
    _check_longest(max(len(message) for message in messages), max_message_bytes)
    return messages


def encode_model_chunks_streamed(
    header: ModelHeader,
    shapes: Mapping[str, Sequence[int]],
    values: Callable[[], Iterable[npt.NDArray[np.float32]]],
    *,
    max_message_bytes: int,
    signer: Signer | None = None,
) -> Iterator[bytes]:
    """:func:`encode_model_chunks` of a version never held whole: byte for byte the same messages.

    ``values()`` yields the version's values flattened in tensor-name order (each tensor in C order), in pieces
    of any size; it is called twice, once for the chunks' digests (which the signed header lists) and once for
    the messages, and must yield the same values both times. Holds one chunk at a time. Raises ``ValueError``
    for a non-finite value, a count that does not fit ``shapes``, or values that changed between the passes.
    """
    like = {name: np.broadcast_to(np.float32(0), tuple(shapes[name])) for name in sorted(shapes)}  # no memory
    total = sum(math.prod(array.shape) for array in like.values())
    header_bytes = len(header.model_dump_json(exclude={"layout"}).encode())
    chunk_elements = chunk_elements_for(like, Encoding.FLOAT32, max_message_bytes, header_bytes)
    digests = [sha256_hex(body) for body in _float32_bodies(values(), chunk_elements, total)]
    layout = ChunkLayout(
        encoding=Encoding.FLOAT32, tensors=_shapes(like), chunk_elements=chunk_elements, chunk_sha256=digests
    )
    prefix = _signed_prefix(MODEL_CHUNK_MAGIC, header, layout, signer)
    for index, body in enumerate(_float32_bodies(values(), chunk_elements, total)):
        if sha256_hex(body) != digests[index]:
            raise ValueError(f"chunk {index} changed between the two passes over the values")
        message = prefix + _U32.pack(index) + body
        _check_longest(len(message), max_message_bytes)
        yield message


def _float32_bodies(pieces: Iterable[npt.NDArray[np.float32]], chunk_elements: int, total: int) -> Iterator[bytes]:
    """The float32 bodies of chunks of ``chunk_elements`` values cut from ``pieces`` (``total`` values in all)."""
    held: list[npt.NDArray[np.float32]] = []
    held_count = seen = 0
    for piece in pieces:
        flat = np.ascontiguousarray(piece, dtype=np.float32).reshape(-1)
        _check_encodable(flat, Encoding.FLOAT32)
        seen += flat.size
        while flat.size:
            take = min(chunk_elements - held_count, flat.size)
            held.append(flat[:take])
            held_count += take
            flat = flat[take:]
            if held_count == chunk_elements:
                yield np.concatenate(held).tobytes()
                held, held_count = [], 0
    if held_count:
        yield np.concatenate(held).tobytes()
    if seen != total:
        raise ValueError(f"the values number {seen}, the shapes hold {total}")


def _signed_prefix(magic: bytes, header: _Header, layout: ChunkLayout, signer: Signer | None) -> bytes:
    """What every chunk message of one payload starts with: magic, header length, header with layout, signature."""
    header_json = _with_layout(header, layout).model_dump_json().encode()
    if len(header_json) > MAX_CHUNK_HEADER_BYTES:
        raise ValueError(f"the chunk header is {len(header_json)} bytes, more than {MAX_CHUNK_HEADER_BYTES}")
    signature = signer(magic + header_json) if signer is not None else UNSIGNED
    if len(signature) != SIGNATURE_BYTES:
        raise ValueError(f"a signature is {SIGNATURE_BYTES} bytes, the signer returned {len(signature)}")
    return magic + _U32.pack(len(header_json)) + header_json + signature


def _check_longest(longest: int, max_message_bytes: int) -> None:
    if longest > max_message_bytes:  # the size estimate is conservative; this guards against it being wrong
        raise ValueError(f"a chunk message of {longest} bytes exceeds {max_message_bytes}")


def _with_layout(header: _Header, layout: ChunkLayout) -> _Header:
    # model_copy(update=...) skips validation; rebuilding validates the layout and hash like a decoded header.
    fields = header.model_dump(exclude={"layout", "payload_sha256"})
    fields.update(layout=layout.model_dump(), payload_sha256=chunks_root(layout.chunk_sha256))
    return type(header).model_validate(fields)


def decode_update_chunk(
    value: bytes | None, key: bytes | None = None, max_message_bytes: int | None = None
) -> UpdateChunk | Rejection:
    """Decode one update chunk, or say why it is not one; never raises.

    Checks the framing, the header (schema version, a layout present), the Kafka key against ``client_id``,
    that ``payload_sha256`` is the layout's root, the index against the layout, and the body's SHA-256 against
    the layout's hash for that index. Not checked: the signature (the job's client registry does that).
    """
    try:
        parsed = _decode_chunk(value, UPDATE_CHUNK_MAGIC, UpdateHeader, max_message_bytes, key)
    except Exception as error:  # decoding never raises: a surprise is reported as the chunk's problem
        return _unexpected(error)
    if isinstance(parsed, Rejection):
        return parsed
    header, index, body, signature, signed = parsed
    return UpdateChunk(header=header, index=index, body=body, signature=signature, signed_bytes=signed)


def decode_model_chunk(value: bytes | None, max_message_bytes: int | None = None) -> ModelChunk | Rejection:
    """Decode one model chunk (the same checks as :func:`decode_update_chunk`, float32 only); never raises."""
    try:
        parsed = _decode_chunk(value, MODEL_CHUNK_MAGIC, ModelHeader, max_message_bytes, None)
    except Exception as error:  # decoding never raises: a surprise is reported as the chunk's problem
        return _unexpected(error)
    if isinstance(parsed, Rejection):
        return parsed
    header, index, body, signature, signed = parsed
    return ModelChunk(header=header, index=index, body=body, signature=signature, signed_bytes=signed)


def _split_chunk(value: bytes | None, magic: bytes) -> tuple[bytes, bytes, int, bytes] | Rejection:
    """``(header_json, signature, index, body)`` of a chunk message, or why its framing is wrong."""
    if value is None:
        return Rejection(RejectionReason.MALFORMED_ENVELOPE, "message has no value")
    if len(value) < _PREFIX_BYTES:
        return Rejection(RejectionReason.MALFORMED_ENVELOPE, f"message of {len(value)} bytes is too short")
    if value[: len(magic)] != magic:
        return Rejection(RejectionReason.MALFORMED_ENVELOPE, f"magic {value[: len(magic)]!r} is not {magic!r}")
    (header_length,) = _U32.unpack_from(value, len(magic))
    header_end = _PREFIX_BYTES + header_length
    if header_length > MAX_CHUNK_HEADER_BYTES or header_end + SIGNATURE_BYTES + _U32.size > len(value):
        return Rejection(
            RejectionReason.MALFORMED_ENVELOPE,
            f"header length {header_length} leaves no room for the signature and chunk index in "
            f"{len(value)} bytes, or exceeds {MAX_CHUNK_HEADER_BYTES}",
        )
    signature_end = header_end + SIGNATURE_BYTES
    (index,) = _U32.unpack_from(value, signature_end)
    return value[_PREFIX_BYTES:header_end], value[header_end:signature_end], index, value[signature_end + _U32.size :]


def _decode_chunk(
    value: bytes | None, magic: bytes, header_type: type[_Header], max_message_bytes: int | None, key: bytes | None
) -> tuple[_Header, int, bytes, bytes, bytes] | Rejection:
    """``(header, index, body, signature, signed_bytes)`` of a chunk, checked in the documented order."""
    split = _split_chunk(value, magic)
    if isinstance(split, Rejection):
        return split
    assert value is not None  # _split_chunk rejects None
    if max_message_bytes is not None and len(value) > max_message_bytes:
        return Rejection(RejectionReason.OVERSIZED, f"{len(value)} bytes exceeds {max_message_bytes}")
    header_json, signature, index, body = split
    header = parse_header(header_json, header_type)
    if isinstance(header, Rejection):
        return header
    problem = _header_problem(header, key)
    if problem is None:
        problem = _index_and_body_problem(_layout_of(header), index, body)
    if problem is not None:
        return problem
    return header, index, body, signature, magic + header_json


def _header_problem(header: UpdateHeader | ModelHeader, key: bytes | None) -> Rejection | None:
    layout = header.layout
    if layout is None:
        return Rejection(RejectionReason.INVALID_HEADER, "layout: a chunk's header must name its chunk layout")
    if isinstance(header, ModelHeader) and layout.encoding is not Encoding.FLOAT32:
        return Rejection(
            RejectionReason.INVALID_HEADER, f"layout.encoding: a model is sent as float32, not {layout.encoding.value}"
        )
    if isinstance(header, UpdateHeader) and key is not None and key != header.client_id.encode():
        return Rejection(RejectionReason.KEY_MISMATCH, f"key {key[:80]!r} != client_id {header.client_id!r}")
    root = chunks_root(layout.chunk_sha256)
    if header.payload_sha256 != root:
        return Rejection(
            RejectionReason.PAYLOAD_HASH_MISMATCH,
            f"header says payload {header.payload_sha256}, its layout's chunks make {root}",
        )
    return None


def _index_and_body_problem(layout: ChunkLayout, index: int, body: bytes) -> Rejection | None:
    if index >= layout.chunk_count:
        return Rejection(RejectionReason.MALFORMED_ENVELOPE, f"chunk index {index} of {layout.chunk_count} chunks")
    actual = sha256_hex(body)
    if actual != layout.chunk_sha256[index]:
        return Rejection(
            RejectionReason.PAYLOAD_HASH_MISMATCH,
            f"chunk {index} body hashes to {actual}, the layout says {layout.chunk_sha256[index]}",
        )
    return _body_problem(layout, index, body)


def assemble_update(chunks: Sequence[UpdateChunk]) -> DecodedUpdate | Rejection:
    """The whole update from all of its chunks (one per index, any order, one ``assembly_id``); never raises.

    The result is what ``schemas.wire.decode_update`` would give for the same update sent whole: float32
    ``delta`` tensors, ``payload`` their safetensors bytes, and the chunks' header, signature and signed bytes.
    Unlike a whole update's, this ``payload`` does not hash to ``header.payload_sha256``: that names the chunk
    bodies (:func:`chunks_root`), which the signature covers; ``payload`` is rebuilt from the decoded values.
    """
    try:
        assembled = _assemble(chunks)
        if isinstance(assembled, Rejection):
            return assembled
        first, delta = assembled
        assert isinstance(first, UpdateChunk)
        return DecodedUpdate(
            header=first.header,
            delta=delta,
            payload=encode_tensors(delta),
            signature=first.signature,
            signed_bytes=first.signed_bytes,
        )
    except Exception as error:  # assembly never raises: a surprise is reported as the update's problem
        return _unexpected(error)


def assemble_model(chunks: Sequence[ModelChunk]) -> DecodedModel | Rejection:
    """The whole global version from all of its chunks (one per index, any order); never raises."""
    try:
        assembled = _assemble(chunks)
        if isinstance(assembled, Rejection):
            return assembled
        first, parameters = assembled
        assert isinstance(first, ModelChunk)
        return DecodedModel(
            header=first.header, parameters=parameters, signature=first.signature, signed_bytes=first.signed_bytes
        )
    except Exception as error:  # assembly never raises: a surprise is reported as the version's problem
        return _unexpected(error)


def _assemble(chunks: Sequence[UpdateChunk | ModelChunk]) -> tuple[UpdateChunk | ModelChunk, Tensors] | Rejection:
    """The first chunk (for its header and signature) and the tensors all the chunks make together."""
    if not chunks:
        return Rejection(RejectionReason.MALFORMED_PAYLOAD, "no chunks to assemble")
    assemblies = {chunk.assembly_id for chunk in chunks}
    if len(assemblies) > 1:
        return Rejection(
            RejectionReason.MALFORMED_PAYLOAD, f"the chunks belong to {len(assemblies)} different messages"
        )
    layout = chunks[0].layout
    problem = _index_problem(layout, [chunk.index for chunk in chunks])
    if problem is not None:
        return problem
    values = []
    for chunk in sorted(chunks, key=lambda chunk: chunk.index):
        decoded = decode_chunk_body(layout, chunk.index, chunk.body)
        if isinstance(decoded, Rejection):
            return decoded
        values.append(decoded)
    return chunks[0], tensors_from_flat(layout, np.concatenate(values))


def _index_problem(layout: ChunkLayout, indices: list[int]) -> Rejection | None:
    counts = Counter(indices)
    duplicates = sorted(index for index, count in counts.items() if count > 1)
    missing = sorted(set(range(layout.chunk_count)) - counts.keys())
    beyond = sorted(index for index in counts if not 0 <= index < layout.chunk_count)
    if not (duplicates or missing or beyond):
        return None
    named = {"missing": missing, "duplicate": duplicates, "out of range": beyond}
    detail = "; ".join(f"{what} indices {_some(found)}" for what, found in named.items() if found)
    return Rejection(RejectionReason.MALFORMED_PAYLOAD, f"{layout.chunk_count} chunks expected: {detail}"[:500])


def _some(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:20]))
    return f"{shown}, ... ({len(indices)} in all)" if len(indices) > 20 else shown


def model_chunk_key(model_name: str, index: int) -> bytes:
    """The ``fl.models`` key of chunk ``index`` of a chunked version of ``model_name``."""
    return f"{model_name}{CHUNK_KEY_SEPARATOR}{index}".encode()


def is_models_key_of(key: bytes | None, model_name: str) -> bool:
    """True for ``model_name``'s keys on ``fl.models``: its whole versions' and its chunks'."""
    if key is None:
        return False
    mine = model_name.encode()
    return key == mine or key.startswith(mine + CHUNK_KEY_SEPARATOR.encode())


def tensors_from_flat(layout: ChunkLayout, flat: npt.NDArray[np.float32]) -> Tensors:
    """Split a flat vector of ``layout.total_elements`` values into the layout's named tensors.

    Raises ``ValueError`` when ``flat`` does not hold exactly that many values.
    """
    if flat.ndim != 1 or flat.size != layout.total_elements:
        raise ValueError(f"{flat.size} values for a layout of {layout.total_elements}")
    tensors: Tensors = {}
    offset = 0
    for tensor in layout.tensors:
        count = math.prod(tensor.shape)
        # a copy per tensor: the result owns its memory and a 0-d shape [] comes back 0-d
        tensors[tensor.name] = np.array(flat[offset : offset + count], dtype=np.float32).reshape(tensor.shape)
        offset += count
    return tensors
