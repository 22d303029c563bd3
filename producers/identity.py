"""A client's identity: a pseudonymous id and an Ed25519 key pair whose private half never leaves the device."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import IDENTIFIER_PATTERN

CLIENT_ID_PATTERN = re.compile(IDENTIFIER_PATTERN)


@dataclass(frozen=True)
class ClientIdentity:
    """Signs updates; ``public_key`` is what an operator enrols with ``fedstream clients enrol``."""

    client_id: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, client_id: str) -> ClientIdentity:
        """A fresh key pair for ``client_id`` (lower-case letters, digits, '.', '_', '-'; at most 64)."""
        if not CLIENT_ID_PATTERN.fullmatch(client_id):
            raise ValueError(f"client id {client_id!r} must match {CLIENT_ID_PATTERN.pattern}")
        return cls(client_id, Ed25519PrivateKey.generate())

    @classmethod
    def pseudonymous(cls) -> ClientIdentity:
        """A fresh key pair whose id is derived from its public key, so the id says nothing about the person."""
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(pseudonym_for(public), key)

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature (64 bytes) of ``message``."""
        return self.private_key.sign(message)

    def save(self, folder: Path) -> tuple[Path, Path]:
        """Write ``<id>.key`` (private, mode 600) and ``<id>.pub`` (public, to enrol) into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        private_path, public_path = folder / f"{self.client_id}.key", folder / f"{self.client_id}.pub"
        private_path.write_bytes(
            self.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        private_path.chmod(0o600)
        public_path.write_text(self.public_key.hex() + "\n")
        return private_path, public_path

    @classmethod
    def load(cls, private_key_path: Path) -> ClientIdentity:
        """Read an identity saved by :meth:`save`; the client id is the file's stem."""
        key = serialization.load_pem_private_key(private_key_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{private_key_path} does not hold an Ed25519 private key")
        return cls(private_key_path.stem, key)


def pseudonym_for(public_key: bytes) -> str:
    """``c-`` and the first 16 hex digits of the key's SHA-256: stable per key, unlinkable to a person."""
    return "c-" + hashlib.sha256(public_key).hexdigest()[:16]
