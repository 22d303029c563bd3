"""Client identities: ids that validate, pseudonyms derived from the key, keys that survive a save and load."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from producers.identity import ClientIdentity, pseudonym_for
from schemas.messages import IDENTIFIER_PATTERN
from streaming_jobs.client_registry import public_keys_in


def test_a_pseudonym_is_derived_from_the_public_key_and_is_a_valid_client_id() -> None:
    identity = ClientIdentity.pseudonymous()
    assert identity.client_id == "c-" + hashlib.sha256(identity.public_key).hexdigest()[:16]
    assert identity.client_id == pseudonym_for(identity.public_key)
    assert re.fullmatch(IDENTIFIER_PATTERN, identity.client_id)
    assert ClientIdentity.pseudonymous().client_id != identity.client_id


@pytest.mark.parametrize("client_id", ["John Doe", "john.doe@example.com", "", "x" * 65, "-leading", "ok\n", "Ab"])
def test_ids_that_a_message_could_not_carry_are_refused_at_key_generation(client_id: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        ClientIdentity.generate(client_id)


def test_a_saved_identity_loads_with_its_id_and_signs_verifiably(tmp_path: Path) -> None:
    identity = ClientIdentity.pseudonymous()
    private_path, public_path = identity.save(tmp_path)
    assert private_path.stat().st_mode & 0o777 == 0o600
    loaded = ClientIdentity.load(private_path)
    assert loaded.client_id == identity.client_id
    ((client_id, public),) = public_keys_in(str(public_path))  # as the job reads it when enrolling
    assert (client_id, public) == (identity.client_id, identity.public_key)
    Ed25519PublicKey.from_public_bytes(public).verify(loaded.sign(b"update"), b"update")


def test_keygen_without_an_id_writes_a_pseudonymous_key_pair(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "fedstream.cli", "clients", "keygen", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    (public_path,) = tmp_path.glob("*.pub")
    ((client_id, public),) = public_keys_in(str(public_path))
    assert client_id == public_path.stem == pseudonym_for(public)
    assert public_path.stem in completed.stdout
    assert (tmp_path / f"{public_path.stem}.key").exists()
