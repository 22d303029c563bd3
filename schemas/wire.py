"""Framing of fedstream's Kafka messages.

Both messages are ``magic | header length | JSON header | signature | safetensors payload``. ``magic`` is 4
bytes naming the message kind and framing version (``FSU1`` update, ``FSM2`` model), the header length a
big-endian uint32, the signature 64 bytes: an Ed25519 signature over ``magic + JSON header`` (the header
names the payload's SHA-256, so the signature binds the payload too), or 64 zero bytes when unsigned. A
client signs its updates with its own key; the job signs each global model version with the job's key, and
clients trust only versions that key signed (``FSM1``, the unsigned model framing, is no longer read).
Decoding never raises on bad input: it returns the problem it finds as a
:class:`~schemas.rejections.Rejection`, so the job can record it and a client can ignore it and move on.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from schemas.messages import SCHEMA_VERSION, ModelHeader, UpdateHeader
from schemas.rejections import Rejection, RejectionReason
from schemas.tensors import Tensors, decode_tensors, encode_tensors, sha256_hex
from schemas.topics import MAX_MESSAGE_BYTES

UPDATE_MAGIC: Final = b"FSU1"
MODEL_MAGIC: Final = b"FSM2"
"""Model framing 2: a signature slot after the header, and the parent's hash in it (``FSM1`` had neither)."""
_LENGTH = struct.Struct(">I")
_PREFIX_BYTES: Final = len(UPDATE_MAGIC) + _LENGTH.size
MAX_HEADER_BYTES: Final = 64 * 1024
SIGNATURE_BYTES: Final = 64
UNSIGNED: Final = bytes(SIGNATURE_BYTES)

_Header = TypeVar("_Header", UpdateHeader, ModelHeader)

Signer = Callable[[bytes], bytes]
"""Signs the bytes :func:`signed_bytes` returns; a client's private key lives inside it."""


@dataclass(frozen=True)
class DecodedUpdate:
    """A well-formed update: its header, its delta tensors, and its signature with the bytes it signs."""

    header: UpdateHeader
    delta: Tensors
    payload: bytes = b""
    """The safetensors bytes ``delta`` was decoded from (their SHA-256 is ``header.payload_sha256``)."""
    signature: bytes = UNSIGNED
    signed_bytes: bytes = b""

    @property
    def is_signed(self) -> bool:
        """False when the signature slot holds zeros."""
        return self.signature != UNSIGNED

    @property
    def payload_sha256(self) -> str:
        """SHA-256 of ``payload``: the header's for an update sent whole.

        A chunked update's signed header names its encoded chunks instead (``schemas.chunks.chunks_root``), and
        its ``payload`` is rebuilt from the decoded values, so that hash is computed here. A chunked update kept
        only as its chunks (no ``payload``: a model aggregated on executors) is named by the header's hash.
        """
        if self.header.layout is None or not self.payload:
            return self.header.payload_sha256
        return sha256_hex(self.payload)


@dataclass(frozen=True)
class DecodedModel:
    """A well-formed global model message: its header, its parameters, and its signature with the bytes it signs.

    Decoding does not say who signed: a reader checks ``signature`` over ``signed_bytes`` with the job's key.
    """

    header: ModelHeader
    parameters: Tensors
    signature: bytes = UNSIGNED
    signed_bytes: bytes = b""

    @property
    def is_signed(self) -> bool:
        """False when the signature slot holds zeros."""
        return self.signature != UNSIGNED


def frame(magic: bytes, header_json: bytes, payload: bytes) -> bytes:
    """Join magic, header and payload into one message value."""
    return magic + _LENGTH.pack(len(header_json)) + header_json + payload


def signed_bytes(header_json: bytes) -> bytes:
    """What a client signs: the update magic and the exact header bytes sent (which name the payload hash)."""
    return UPDATE_MAGIC + header_json


def encode_update(header: UpdateHeader, payload: bytes, signer: Signer | None = None) -> bytes:
    """Encode an update whose ``payload_sha256`` already names ``payload``, signed when ``signer`` is given.

    Raises ``ValueError`` for a header with a ``layout``: a chunked update is sent by ``schemas.chunks``.
    """
    header_json = _whole_header_json(header, payload)
    signature = signer(signed_bytes(header_json)) if signer is not None else UNSIGNED
    if len(signature) != SIGNATURE_BYTES:
        raise ValueError(f"a signature is {SIGNATURE_BYTES} bytes, the signer returned {len(signature)}")
    return frame(UPDATE_MAGIC, header_json, signature + payload)


def model_signed_bytes(header_json: bytes) -> bytes:
    """What the job signs: the model magic and the exact header bytes sent (which name the payload hash)."""
    return MODEL_MAGIC + header_json


def encode_model(header: ModelHeader, payload: bytes, signer: Signer | None = None) -> bytes:
    """Encode a global model version whose ``payload_sha256`` already names ``payload``, signed by ``signer``.

    Without ``signer`` the signature slot holds zeros, which no client configured with the job's key accepts.
    Raises ``ValueError`` for a header with a ``layout``: a chunked version is sent by ``schemas.chunks``.
    """
    header_json = _whole_header_json(header, payload)
    signature = signer(model_signed_bytes(header_json)) if signer is not None else UNSIGNED
    if len(signature) != SIGNATURE_BYTES:
        raise ValueError(f"a signature is {SIGNATURE_BYTES} bytes, the signer returned {len(signature)}")
    return frame(MODEL_MAGIC, header_json, signature + payload)


def _whole_header_json(header: UpdateHeader | ModelHeader, payload: bytes) -> bytes:
    if header.layout is not None:
        raise ValueError("a header with a chunk layout cannot be sent as a whole message (use schemas.chunks)")
    if header.payload_sha256 != sha256_hex(payload):
        raise ValueError(f"header.payload_sha256 {header.payload_sha256!r} does not match the payload")
    # Without the layout key the bytes are exactly those written before chunking existed, so signatures and
    # readers of whole messages are unaffected.
    return header.model_dump_json(exclude={"layout"}).encode()


def tensors_payload(tensors: Mapping[str, npt.NDArray[np.float32]]) -> tuple[bytes, str]:
    """Safetensors bytes of ``tensors`` and their SHA-256, ready for a header."""
    payload = encode_tensors(tensors)
    return payload, sha256_hex(payload)


def split_frame(value: bytes, magic: bytes) -> tuple[bytes, bytes] | Rejection:
    """Return ``(header_json, payload)`` or why the framing is wrong."""
    if len(value) < _PREFIX_BYTES:
        return Rejection(RejectionReason.MALFORMED_ENVELOPE, f"message of {len(value)} bytes is too short")
    if value[:4] != magic:
        return Rejection(RejectionReason.MALFORMED_ENVELOPE, f"magic {value[:4]!r} is not {magic!r}")
    (header_length,) = _LENGTH.unpack_from(value, 4)
    if header_length > MAX_HEADER_BYTES or _PREFIX_BYTES + header_length > len(value):
        return Rejection(
            RejectionReason.MALFORMED_ENVELOPE,
            f"header length {header_length} exceeds the message ({len(value)} bytes) or {MAX_HEADER_BYTES}",
        )
    return value[_PREFIX_BYTES : _PREFIX_BYTES + header_length], value[_PREFIX_BYTES + header_length :]


def decode_update(
    value: bytes | None, key: bytes | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> DecodedUpdate | Rejection:
    """Decode one ``fl.updates`` message value, or say why it is not a valid update.

    The Kafka key, when given, must equal the header's ``client_id``.
    """
    if value is None:
        return Rejection(RejectionReason.MALFORMED_ENVELOPE, "message has no value")
    if len(value) > max_message_bytes:
        return Rejection(RejectionReason.OVERSIZED, f"{len(value)} bytes exceeds {max_message_bytes}")
    framed = split_frame(value, UPDATE_MAGIC)
    if isinstance(framed, Rejection):
        return framed
    header_json, signed_payload = framed
    if len(signed_payload) < SIGNATURE_BYTES:
        return Rejection(RejectionReason.MALFORMED_ENVELOPE, f"no room for the {SIGNATURE_BYTES}-byte signature")
    signature, payload = signed_payload[:SIGNATURE_BYTES], signed_payload[SIGNATURE_BYTES:]
    header = parse_header(header_json, UpdateHeader)
    if isinstance(header, Rejection):
        return header
    if header.layout is not None:
        return _layout_in_whole_message()
    if key is not None and key != header.client_id.encode():
        return Rejection(RejectionReason.KEY_MISMATCH, f"key {key[:80]!r} != client_id {header.client_id!r}")
    actual_hash = sha256_hex(payload)
    if actual_hash != header.payload_sha256:
        return Rejection(
            RejectionReason.PAYLOAD_HASH_MISMATCH,
            f"payload hashes to {actual_hash}, header says {header.payload_sha256}",
        )
    try:
        delta = decode_tensors(payload)
    except ValueError as error:
        return Rejection(RejectionReason.MALFORMED_PAYLOAD, str(error)[:300])
    return DecodedUpdate(
        header=header, delta=delta, payload=payload, signature=signature, signed_bytes=signed_bytes(header_json)
    )


def decode_model_message(value: bytes | None, max_message_bytes: int = MAX_MESSAGE_BYTES) -> DecodedModel | Rejection:
    """Decode one ``fl.models`` value, or say why it is not a well-formed model message; never raises.

    The signature comes back unchecked (``DecodedModel.signature``): only the reader knows the job's key.
    """
    if value is None:
        return Rejection(RejectionReason.MALFORMED_ENVELOPE, "message has no value (a tombstone)")
    if len(value) > max_message_bytes:
        return Rejection(RejectionReason.OVERSIZED, f"{len(value)} bytes exceeds {max_message_bytes}")
    framed = split_frame(value, MODEL_MAGIC)
    if isinstance(framed, Rejection):
        return framed
    header_json, signed_payload = framed
    if len(signed_payload) < SIGNATURE_BYTES:
        return Rejection(RejectionReason.MALFORMED_ENVELOPE, f"no room for the {SIGNATURE_BYTES}-byte signature")
    signature, payload = signed_payload[:SIGNATURE_BYTES], signed_payload[SIGNATURE_BYTES:]
    try:
        header = ModelHeader.model_validate_json(header_json)
    except ValidationError as error:  # bad UTF-8 and bad JSON too
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        return Rejection(RejectionReason.INVALID_HEADER, problems[:500])
    if header.layout is not None:
        return _layout_in_whole_message()
    actual_hash = sha256_hex(payload)
    if actual_hash != header.payload_sha256:
        return Rejection(
            RejectionReason.PAYLOAD_HASH_MISMATCH,
            f"model version {header.version}: payload does not match its hash "
            f"(hashes to {actual_hash}, header says {header.payload_sha256})",
        )
    try:
        parameters = decode_tensors(payload)
    except ValueError as error:
        return Rejection(RejectionReason.MALFORMED_PAYLOAD, str(error)[:300])
    return DecodedModel(
        header=header, parameters=parameters, signature=signature, signed_bytes=model_signed_bytes(header_json)
    )


def decode_model(value: bytes) -> DecodedModel:
    """Decode one ``fl.models`` value; raises ``ValueError`` naming the problem on anything malformed.

    It checks the framing and the payload hash, not who signed: a client uses ``producers.trusted_versions``.
    """
    decoded = decode_model_message(value)
    if isinstance(decoded, Rejection):
        raise ValueError(str(decoded))
    return decoded


def _layout_in_whole_message() -> Rejection:
    return Rejection(
        RejectionReason.INVALID_HEADER, "layout: a whole message carries no chunk layout (only a chunk's header does)"
    )


def parse_header(header_json: bytes, header_type: type[_Header]) -> _Header | Rejection:
    """The header in ``header_json`` (whole messages' and chunks'), or why it is not one; never raises."""
    # The schema version is read before pydantic, so a newer client's header is reported as such and not as
    # whatever field this version of the schema happens to trip over first.
    try:
        raw = json.loads(header_json)
    except (ValueError, RecursionError) as error:  # includes bad UTF-8, bad JSON, over-long integers, deep nesting
        return Rejection(RejectionReason.INVALID_HEADER, f"header is not JSON: {str(error)[:200]}")
    if not isinstance(raw, dict):
        return Rejection(RejectionReason.INVALID_HEADER, f"header is a JSON {type(raw).__name__}, not an object")
    version = raw.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        return Rejection(
            RejectionReason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {version!r}; this job reads {SCHEMA_VERSION}",
        )
    try:
        return header_type.model_validate_json(header_json)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        return Rejection(RejectionReason.INVALID_HEADER, problems[:500])
