"""Which global versions a client takes: signed by the job's key, well formed, and chained to what it holds.

Anyone whose Kafka login may write ``fl.models`` (a leaked job password, a misconfigured ACL) could publish a
"version 999", and a client follows the highest version it sees. So the job signs every version with its own
Ed25519 key (``streaming_jobs.signing_key``) and a client is configured with the matching public key: a
message becomes the client's global model only when that key signed it, its payload matches the signed hashes,
and its parent hash equals the hash of the parent the client already holds (where it holds it). Everything
else is an :class:`IgnoredVersion` naming the reason; checking a message never raises.

The client finds the job's public key in ``FEDSTREAM_JOB_PUBLIC_KEY`` (64 hex digits), else in the file
``FEDSTREAM_JOB_PUBLIC_KEY_FILE`` (a ``.pub`` file as ``fedstream job-key`` writes it), else in the local
stack's ``<state>/keys/fedstream-job.pub``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.paths import local_job_key_files
from schemas.rejections import Rejection
from schemas.tensors import parameter_hash
from schemas.topics import MAX_MESSAGE_BYTES
from schemas.wire import DecodedModel, decode_model_message

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
    header = decoded.header
    if not decoded.is_signed:
        return IgnoredVersion(IgnoreReason.UNSIGNED, "the signature slot holds zeros", header.version)
    try:
        job_key.verify(decoded.signature, decoded.signed_bytes)
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
    actual = parameter_hash(decoded.parameters)
    if actual != header.parameter_hash:
        return IgnoredVersion(
            IgnoreReason.PARAMETER_HASH_MISMATCH,
            f"the parameters hash to {actual}, the header says {header.parameter_hash}",
            header.version,
        )
    return decoded


class VersionChain:
    """The versions of one model a client has taken: the newest, and the hashes of the ones before it.

    ``offer`` takes a message only if :func:`check_signed_version` accepts it, it is newer than the newest, and
    its parent hash matches the remembered hash of its parent version. Where the parent was never seen (the
    client started later, or compaction removed it) there is nothing to compare, and the signature must do.
    """

    def __init__(
        self,
        job_public_key: bytes,
        model_name: str,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        remembered_versions: int = 4096,
    ) -> None:
        self.job_key = public_key_from_bytes(job_public_key)
        self.model_name = model_name
        self.max_message_bytes = max_message_bytes
        self.remembered_versions = remembered_versions
        self.newest: DecodedModel | None = None
        self._hashes: OrderedDict[int, str] = OrderedDict()

    def offer(self, value: bytes | None) -> DecodedModel | IgnoredVersion | None:
        """The version now taken, why ``value`` was ignored, or None for a trusted version not newer than the newest.

        A version the job publishes again (it does on every start) is such a None.
        """
        checked = check_signed_version(value, self.job_key, self.model_name, self.max_message_bytes)
        if isinstance(checked, IgnoredVersion):
            return checked
        header = checked.header
        known = self._hashes.get(header.version)
        if known is not None:
            if known == header.parameter_hash:
                return None
            return IgnoredVersion(
                IgnoreReason.CONFLICTING_VERSION,
                f"version {header.version} was taken with parameter hash {known}, this one has {header.parameter_hash}",
                header.version,
            )
        if self.newest is not None and header.version <= self.newest.header.version:
            return None
        problem = self._chain_problem(checked)
        if problem is not None:
            return IgnoredVersion(IgnoreReason.BROKEN_CHAIN, problem, header.version)
        self.newest = checked
        self._hashes[header.version] = header.parameter_hash
        while len(self._hashes) > self.remembered_versions:
            self._hashes.popitem(last=False)
        return checked

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
