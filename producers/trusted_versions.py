"""Which global versions a client takes: signed by the job's key, well formed, and chained to what it holds.

Anyone whose Kafka login may write ``fl.models`` (a leaked job password, a misconfigured ACL) could publish a
"version 999", and a client follows the highest version it sees. So the job signs every version with its own
Ed25519 key (``streaming_jobs.signing_key``) and a client is configured with the matching public key: a
message becomes the client's global model only when that key signed it, its payload matches the signed hashes,
and its parent hash equals the hash of the parent the client already holds (where it holds it). A version too
large for one message comes as chunks (``schemas.chunks``), each signed and checked as it comes, and is taken
once complete. Everything else is an :class:`IgnoredVersion` naming the reason; checking a message never raises.

The client finds the job's public key in ``FEDSTREAM_JOB_PUBLIC_KEY`` (64 hex digits), else in the file
``FEDSTREAM_JOB_PUBLIC_KEY_FILE`` (a ``.pub`` file as ``fedstream job-key`` writes it), else in the local
stack's ``<state>/keys/fedstream-job.pub``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.chunks import ModelChunk, assemble_model, decode_model_chunk, is_model_chunk
from schemas.messages import ModelHeader
from schemas.paths import local_job_key_files
from schemas.rejections import Rejection
from schemas.tensors import parameter_hash
from schemas.topics import MAX_MESSAGE_BYTES
from schemas.wire import UNSIGNED, DecodedModel, decode_model_message

JOB_PUBLIC_KEY_VARIABLE: Final = "FEDSTREAM_JOB_PUBLIC_KEY"
"""The job's raw Ed25519 public key as 64 hex digits."""
JOB_PUBLIC_KEY_FILE_VARIABLE: Final = "FEDSTREAM_JOB_PUBLIC_KEY_FILE"
"""A file holding that key as one line of hex (the ``.pub`` file ``fedstream job-key`` writes)."""
PUBLIC_KEY_BYTES: Final = 32


class MissingJobKeyError(LookupError):
    """No public key of the job is configured, so no global version could be trusted."""


class IgnoreReason(StrEnum):
    """Why a client did not take a message on ``fl.models`` as its global model."""

    MALFORMED = "malformed"
    """Framing, header, payload or payload hash is wrong; the detail holds the decoder's reason."""
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    """Signed, but not by the job's key (another key, or bytes changed after signing)."""
    OTHER_MODEL = "other_model"
    """The Kafka key names this model, the signed header another."""
    PARAMETER_HASH_MISMATCH = "parameter_hash_mismatch"
    """The parameters do not hash to the signed ``parameter_hash``."""
    BROKEN_CHAIN = "broken_chain"
    """The version names a parent hash other than that of the parent version the client holds."""
    CONFLICTING_VERSION = "conflicting_version"
    """The client already took this version number with other parameters."""


@dataclass(frozen=True)
class IgnoredVersion:
    """A message on ``fl.models`` that a client did not take, why, and where it was."""

    reason: IgnoreReason
    detail: str
    version: int | None = None
    """The version number it claimed, when its header could be read."""
    partition: int | None = None
    offset: int | None = None

    def __str__(self) -> str:
        where = "" if self.offset is None else f" (partition {self.partition}, offset {self.offset})"
        claimed = "" if self.version is None else f" claiming version {self.version}"
        return f"{self.reason.value}{claimed}{where}: {self.detail}"


def public_key_from_bytes(raw: bytes, source: str = "the job's public key") -> Ed25519PublicKey:
    """An Ed25519 public key from its 32 raw bytes; ``ValueError`` naming ``source`` otherwise."""
    if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_BYTES:
        size = len(raw) if isinstance(raw, bytes | bytearray) else type(raw).__name__
        raise ValueError(f"{source}: an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes, got {size}")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_from_hex(text: str, source: str) -> bytes:
    """The raw key in one line of hex (a ``.pub`` file or ``FEDSTREAM_JOB_PUBLIC_KEY``)."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError as error:
        raise ValueError(f"{source}: not hex digits ({error})") from None
    public_key_from_bytes(raw, source)
    return raw


def job_public_key_from_env(environ: Mapping[str, str] | None = None) -> bytes:
    """The job's raw public key from the environment, else from the local stack's key pair.

    Raises :class:`MissingJobKeyError` when none is configured, ``ValueError`` when one is malformed.
    """
    values = os.environ if environ is None else environ
    if values.get(JOB_PUBLIC_KEY_VARIABLE):
        return public_key_from_hex(values[JOB_PUBLIC_KEY_VARIABLE], JOB_PUBLIC_KEY_VARIABLE)
    if values.get(JOB_PUBLIC_KEY_FILE_VARIABLE):
        path = Path(values[JOB_PUBLIC_KEY_FILE_VARIABLE])
        return public_key_from_hex(path.read_text(), str(path))
    _, local_public = local_job_key_files()
    if local_public.exists():
        return public_key_from_hex(local_public.read_text(), str(local_public))
    raise MissingJobKeyError(
        f"no public key of the job to check global versions with: set {JOB_PUBLIC_KEY_VARIABLE} (hex) or "
        f"{JOB_PUBLIC_KEY_FILE_VARIABLE} (a .pub file from the job's operator), or start the local stack, "
        f"which makes {local_public}"
    )


def check_signed_version(
    value: bytes | None,
    job_key: Ed25519PublicKey,
    model_name: str,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> DecodedModel | IgnoredVersion:
    """``value`` decoded when it is a well-formed version of ``model_name`` signed by ``job_key``; never raises."""
    decoded = decode_model_message(value, max_message_bytes)
    if isinstance(decoded, Rejection):
        return IgnoredVersion(IgnoreReason.MALFORMED, str(decoded))
    problem = _trust_problem(decoded.header, decoded.signature, decoded.signed_bytes, job_key, model_name)
    return problem or _parameters_problem(decoded) or decoded


def check_signed_chunk(
    value: bytes | None,
    job_key: Ed25519PublicKey,
    model_name: str,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> ModelChunk | IgnoredVersion:
    """``value`` decoded when it is a well-formed chunk of a version of ``model_name`` signed by ``job_key``.

    The same checks as :func:`check_signed_version` but the parameter hash, which needs every chunk; never raises.
    """
    chunk = decode_model_chunk(value, max_message_bytes)
    if isinstance(chunk, Rejection):
        return IgnoredVersion(IgnoreReason.MALFORMED, str(chunk))
    return _trust_problem(chunk.header, chunk.signature, chunk.signed_bytes, job_key, model_name) or chunk


def _trust_problem(
    header: ModelHeader, signature: bytes, signed: bytes, job_key: Ed25519PublicKey, model_name: str
) -> IgnoredVersion | None:
    if signature == UNSIGNED:
        return IgnoredVersion(IgnoreReason.UNSIGNED, "the signature slot holds zeros", header.version)
    try:
        job_key.verify(signature, signed)
    except InvalidSignature:
        return IgnoredVersion(
            IgnoreReason.BAD_SIGNATURE, "the signature does not verify with the job's key", header.version
        )
    if header.model_name != model_name:
        return IgnoredVersion(
            IgnoreReason.OTHER_MODEL,
            f"the header names model {header.model_name!r}, not {model_name!r}",
            header.version,
        )
    return None


def _parameters_problem(decoded: DecodedModel) -> IgnoredVersion | None:
    header = decoded.header
    actual = parameter_hash(decoded.parameters)
    if actual != header.parameter_hash:
        return IgnoredVersion(
            IgnoreReason.PARAMETER_HASH_MISMATCH,
            f"the parameters hash to {actual}, the header says {header.parameter_hash}",
            header.version,
        )
    return None


@dataclass
class _Assembly:
    """The chunks of one chunked version received so far, by index."""

    version: int
    chunk_count: int
    chunks: dict[int, ModelChunk] = field(default_factory=dict)


class VersionChain:
    """The versions of one model a client has taken: the newest, and the hashes of the ones before it.

    ``offer`` takes a message only if :func:`check_signed_version` accepts it, it is newer than the newest, and
    its parent hash matches the remembered hash of its parent version. Where the parent was never seen (the
    client started later, or compaction removed it) there is nothing to compare, and the signature must do.

    A chunked version's chunks are checked one by one as they come (:func:`check_signed_chunk`) and held by
    ``assembly_id`` until all have come; the assembled version then goes through the same checks as a whole
    one. Only chunks of versions newer than the newest are held, of at most ``max_incomplete_versions``
    versions: a compacted ``fl.models`` keeps stray chunks of older versions that never complete, so the
    lowest incomplete version gives way to a newer one.
    """

    def __init__(
        self,
        job_public_key: bytes,
        model_name: str,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        remembered_versions: int = 4096,
        max_incomplete_versions: int = 2,
    ) -> None:
        if max_incomplete_versions < 1:
            raise ValueError(f"max_incomplete_versions must be at least 1, got {max_incomplete_versions}")
        self.job_key = public_key_from_bytes(job_public_key)
        self.model_name = model_name
        self.max_message_bytes = max_message_bytes
        self.remembered_versions = remembered_versions
        self.max_incomplete_versions = max_incomplete_versions
        self.newest: DecodedModel | None = None
        self._hashes: OrderedDict[int, str] = OrderedDict()
        self._assemblies: dict[str, _Assembly] = {}

    @property
    def incomplete_versions(self) -> int:
        """How many chunked versions have some of their chunks held (at most ``max_incomplete_versions``)."""
        return len(self._assemblies)

    @property
    def held_chunks(self) -> int:
        """How many chunks of incomplete versions are held."""
        return sum(len(assembly.chunks) for assembly in self._assemblies.values())

    def offer(self, value: bytes | None) -> DecodedModel | IgnoredVersion | None:
        """The version now taken, why ``value`` was ignored, or None for a trusted version not newer than the newest.

        A version the job publishes again (it does on every start) is such a None, and so is a good chunk of a
        version not yet complete; the chunk that completes a version returns what the version's checks give.
        """
        if is_model_chunk(value):
            return self._offer_chunk(value)
        checked = check_signed_version(value, self.job_key, self.model_name, self.max_message_bytes)
        if isinstance(checked, IgnoredVersion):
            return checked
        return self._take(checked)

    def _take(self, checked: DecodedModel) -> DecodedModel | IgnoredVersion | None:
        header = checked.header
        conflict = self._conflict(header)
        if conflict is not None:
            return conflict
        if not self._is_newer(header.version):
            return None
        problem = self._chain_problem(checked)
        if problem is not None:
            return IgnoredVersion(IgnoreReason.BROKEN_CHAIN, problem, header.version)
        self.newest = checked
        self._hashes[header.version] = header.parameter_hash
        while len(self._hashes) > self.remembered_versions:
            self._hashes.popitem(last=False)
        self._drop_not_newer()
        return checked

    def _conflict(self, header: ModelHeader) -> IgnoredVersion | None:
        known = self._hashes.get(header.version)
        if known is None or known == header.parameter_hash:
            return None
        return IgnoredVersion(
            IgnoreReason.CONFLICTING_VERSION,
            f"version {header.version} was taken with parameter hash {known}, this one has {header.parameter_hash}",
            header.version,
        )

    def _is_newer(self, version: int) -> bool:
        return self.newest is None or version > self.newest.header.version

    def _offer_chunk(self, value: bytes | None) -> DecodedModel | IgnoredVersion | None:
        chunk = check_signed_chunk(value, self.job_key, self.model_name, self.max_message_bytes)
        if isinstance(chunk, IgnoredVersion):
            return chunk
        conflict = self._conflict(chunk.header)
        if conflict is not None:
            return conflict
        if not self._is_newer(chunk.header.version):
            return None
        assembly_id = chunk.assembly_id
        assembly = self._assemblies.setdefault(assembly_id, _Assembly(chunk.header.version, chunk.layout.chunk_count))
        assembly.chunks.setdefault(chunk.index, chunk)  # a duplicate carries the same bytes: the hash says so
        if len(assembly.chunks) < assembly.chunk_count:
            self._bound_incomplete()
            return None
        del self._assemblies[assembly_id]
        return self._assembled(list(assembly.chunks.values()))

    def _assembled(self, chunks: list[ModelChunk]) -> DecodedModel | IgnoredVersion | None:
        decoded = assemble_model(chunks)
        if isinstance(decoded, Rejection):
            return IgnoredVersion(IgnoreReason.MALFORMED, str(decoded), chunks[0].header.version)
        problem = _parameters_problem(decoded)
        if problem is not None:
            return problem
        return self._take(decoded)

    def _bound_incomplete(self) -> None:
        # The lowest version goes first (the oldest held among equals): what is newest matters to a client.
        while len(self._assemblies) > self.max_incomplete_versions:
            lowest = min(self._assemblies, key=lambda assembly_id: self._assemblies[assembly_id].version)
            del self._assemblies[lowest]

    def _drop_not_newer(self) -> None:
        stale = [key for key, assembly in self._assemblies.items() if not self._is_newer(assembly.version)]
        for key in stale:
            del self._assemblies[key]

    def _chain_problem(self, candidate: DecodedModel) -> str | None:
        header = candidate.header
        if header.parent_version is None:
            if self.newest is None:
                return None
            return f"version {header.version} names no parent, but version {self.newest.header.version} is held"
        parent_hash = self._hashes.get(header.parent_version)
        if parent_hash is None or parent_hash == header.parent_parameter_hash:
            return None
        return (
            f"version {header.version} names parent {header.parent_version} with hash "
            f"{header.parent_parameter_hash}, but the version {header.parent_version} held has hash {parent_hash}"
        )
