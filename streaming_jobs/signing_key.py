"""The job's Ed25519 signing key: every global version on ``fl.models`` carries its signature.

Clients hold the public half and take only versions it verifies (``producers.trusted_versions``), so a Kafka
login that may write ``fl.models`` is not enough to publish a version. The private half is a secret like the
Kafka password; the job takes the first of:

1. ``JobSettings.signing_key``: PEM text from ``FEDSTREAM_JOB_SIGNING_KEY`` or, with ``FEDSTREAM_SECRET_SCOPE``,
   the secret ``job-signing-key`` in that scope (Databricks);
2. ``JobSettings.signing_key_file``: a PEM file, from ``FEDSTREAM_JOB_SIGNING_KEY_FILE`` or ``--signing-key``;
3. off Databricks only: the local stack's key pair in ``<state>/keys``, made on first use, whose ``.pub`` the
   local clients read.

``fedstream job-key --out DIR`` makes a key pair for a deployment: ``fedstream-job.key`` (PKCS#8 PEM, mode 600)
for the secret store, ``fedstream-job.pub`` (hex) for the clients.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.paths import LOCAL_JOB_KEY_NAME, local_job_key_files
from streaming_jobs import databricks

if TYPE_CHECKING:
    from streaming_jobs.settings import JobSettings

SIGNING_KEY_VARIABLE = "FEDSTREAM_JOB_SIGNING_KEY"
SIGNING_KEY_FILE_VARIABLE = "FEDSTREAM_JOB_SIGNING_KEY_FILE"


class SigningKeyError(ValueError):
    """The job's signing key is missing, unreadable or not an Ed25519 private key; the message says where from."""


def parse_private_key(pem: bytes, source: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM ``pem``; the error names ``source``, never the key's bytes."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise SigningKeyError(f"{source} is not an unencrypted PEM private key ({type(error).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{source} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


@dataclass(frozen=True)
class JobSigningKey:
    """Signs global versions; ``source`` says where the key came from (for logs, never the key itself)."""

    private_key: Ed25519PrivateKey
    source: str

    @classmethod
    def generate(cls) -> JobSigningKey:
        """A fresh key pair."""
        return cls(Ed25519PrivateKey.generate(), "generated")

    @classmethod
    def from_file(cls, path: Path) -> JobSigningKey:
        """The key in a PEM file (as :meth:`save` writes it)."""
        try:
            pem = path.read_bytes()
        except OSError as error:
            raise SigningKeyError(f"cannot read the job's signing key {path}: {error.strerror}") from None
        return cls(parse_private_key(pem, str(path)), str(path))

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key: what every client is configured with."""
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature (64 bytes) of ``message``."""
        return self.private_key.sign(message)

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (for a secret store)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def save(self, folder: Path, name: str = LOCAL_JOB_KEY_NAME) -> tuple[Path, Path]:
        """Write ``<name>.key`` (mode 600) and ``<name>.pub`` into ``folder``; never overwrites a private key."""
        folder.mkdir(parents=True, exist_ok=True)
        private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
        _create_exclusively(private_path, self.private_pem())
        _write_public(public_path, self.public_key)
        return private_path, public_path


def local_job_key() -> JobSigningKey:
    """The local stack's key in ``<state>/keys``, made on first use; its ``.pub`` is rewritten to match it."""
    private_path, public_path = local_job_key_files(create_folder=True)
    if not private_path.exists():
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            _create_exclusively(private_path, JobSigningKey.generate().private_pem())
    key = JobSigningKey.from_file(private_path)
    if not public_path.exists() or public_path.read_text().strip() != key.public_key.hex():
        _write_public(public_path, key.public_key)
    return key


def job_signing_key(settings: JobSettings) -> JobSigningKey:
    """The key the job signs with, from ``settings`` or (off Databricks) the local stack; see the module doc."""
    if settings.signing_key is not None:
        pem = settings.signing_key.get_secret_value().encode()
        return JobSigningKey(parse_private_key(pem, "JobSettings.signing_key"), "JobSettings.signing_key")
    if settings.signing_key_file is not None:
        return JobSigningKey.from_file(Path(settings.signing_key_file))
    if databricks.on_databricks():
        raise SigningKeyError(databricks.MISSING_SIGNING_KEY)
    return local_job_key()


def _create_exclusively(path: Path, content: bytes) -> None:
    """Write ``content`` to a new file of mode 600, atomically; ``FileExistsError`` if ``path`` exists."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
        os.chmod(temporary, 0o600)
        os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _write_public(path: Path, public_key: bytes) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(descriptor, "w") as handle:
        handle.write(public_key.hex() + "\n")
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
