"""Signed global versions: the job signs, a client takes only what the job's key verifies and what chains."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from producers.trusted_versions import (
    JOB_PUBLIC_KEY_FILE_VARIABLE,
    JOB_PUBLIC_KEY_VARIABLE,
    IgnoredVersion,
    IgnoreReason,
    MissingJobKeyError,
    VersionChain,
    check_signed_version,
    job_public_key_from_env,
)
from schemas.messages import ModelHeader
from schemas.tensors import Tensors, parameter_hash
from schemas.wire import MODEL_MAGIC, SIGNATURE_BYTES, DecodedModel, decode_model, encode_model, tensors_payload
from streaming_jobs.signing_key import JobSigningKey

MODEL = "har-cnn"
JOB_KEY = JobSigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))), "test")
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
CREATED_AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def parameters(seed: int) -> Tensors:
    values = np.random.default_rng(seed).standard_normal(6).astype(np.float32)
    return {"dense.weight": values[:4].reshape(2, 2), "dense.bias": values[4:]}


def version_message(
    version: int,
    params: Tensors | None = None,
    *,
    parent: tuple[int, str] | None = None,
    signer: object = JOB_KEY.sign,
    model_name: str = MODEL,
    **header_overrides: object,
) -> bytes:
    """A version message as the job frames it; ``parent`` is ``(parent_version, parent_parameter_hash)``."""
    params = parameters(version) if params is None else params
    payload, payload_hash = tensors_payload(params)
    if parent is None and version > 0:
        parent = (version - 1, parameter_hash(parameters(version - 1)))
    fields: dict[str, object] = {
        "model_name": model_name,
        "version": version,
        "parent_version": None if parent is None else parent[0],
        "parent_parameter_hash": None if parent is None else parent[1],
        "parameter_hash": parameter_hash(params),
        "payload_sha256": payload_hash,
        "created_at": CREATED_AT,
        **header_overrides,
    }
    return encode_model(ModelHeader.model_validate(fields), payload, signer)  # type: ignore[arg-type]


def ignored(outcome: object, reason: IgnoreReason) -> IgnoredVersion:
    assert isinstance(outcome, IgnoredVersion), outcome
    assert outcome.reason is reason, outcome
    return outcome


def check(value: bytes | None) -> DecodedModel | IgnoredVersion:
    return check_signed_version(value, JOB_KEY.private_key.public_key(), MODEL)


# ── the framing: FSM2 carries a signature ──────────────────────────────────────────────────────────────────────────


def test_the_job_signs_the_magic_and_the_exact_header_bytes() -> None:
    message = version_message(3)
    assert message.startswith(MODEL_MAGIC) and MODEL_MAGIC == b"FSM2"
    header_end = 8 + struct.unpack(">I", message[4:8])[0]
    signature = message[header_end : header_end + SIGNATURE_BYTES]
    JOB_KEY.private_key.public_key().verify(signature, message[:4] + message[8:header_end])


def test_decode_model_still_decodes_a_signed_version_and_reports_its_signature() -> None:
    decoded = decode_model(version_message(3))
    assert decoded.header.version == 3
    assert decoded.header.parent_version == 2
    assert decoded.is_signed
    assert decoded.signed_bytes.startswith(MODEL_MAGIC)
    assert parameter_hash(decoded.parameters) == decoded.header.parameter_hash


def test_a_signer_returning_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="a signature is 64 bytes, the signer returned 3"):
        version_message(1, signer=lambda _: b"abc")


def test_a_header_needs_the_parent_hash_exactly_when_it_names_a_parent() -> None:
    with pytest.raises(ValueError, match="must both be given or both be null"):
        version_message(4, parent_parameter_hash=None)
    with pytest.raises(ValueError, match="must both be given or both be null"):
        version_message(0, parent_parameter_hash="ab" * 32)
    with pytest.raises(ValueError, match="parent_version 4 is not older than version 4"):
        version_message(4, parent=(4, "ab" * 32))


# ── one message, checked against the job's key ─────────────────────────────────────────────────────────────────────


def test_a_version_the_job_signed_is_trusted() -> None:
    decoded = check(version_message(5))
    assert isinstance(decoded, DecodedModel)
    assert decoded.header.version == 5


def test_an_unsigned_version_is_ignored() -> None:
    outcome = ignored(check(version_message(999, signer=None)), IgnoreReason.UNSIGNED)
    assert outcome.version == 999


def test_a_version_signed_with_another_key_is_ignored() -> None:
    outcome = ignored(check(version_message(999, signer=OTHER_KEY.sign)), IgnoreReason.BAD_SIGNATURE)
    assert "job's key" in outcome.detail
    assert "bad_signature claiming version 999" in str(outcome)


def test_a_header_changed_after_signing_is_ignored() -> None:
    message = version_message(5)
    forged = message.replace(b'"version":5', b'"version":9')
    assert forged != message
    ignored(check(forged), IgnoreReason.BAD_SIGNATURE)


def test_a_payload_changed_after_signing_is_ignored() -> None:
    message = version_message(5)
    ignored(check(message[:-1] + bytes([message[-1] ^ 1])), IgnoreReason.MALFORMED)


def test_parameters_that_do_not_match_the_signed_hash_are_ignored() -> None:
    # The job's key signing a wrong parameter_hash: the client checks the parameters it will train from.
    outcome = ignored(check(version_message(5, parameter_hash="cd" * 32)), IgnoreReason.PARAMETER_HASH_MISMATCH)
    assert "cd" * 32 in outcome.detail


def test_a_version_of_another_model_under_this_models_key_is_ignored() -> None:
    outcome = ignored(check(version_message(5, model_name="other-model")), IgnoreReason.OTHER_MODEL)
    assert "'other-model'" in outcome.detail


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "no value"),
        (b"", "too short"),
        (b"garbage that is no model", "magic"),
        (b"FSM1" + version_message(5)[4:], "magic b'FSM1' is not b'FSM2'"),
        (b"FSU1" + version_message(5)[4:], "magic"),
        (MODEL_MAGIC + struct.pack(">I", 2) + b"{}", "no room for the 64-byte signature"),
        (MODEL_MAGIC + struct.pack(">I", 2) + b"{}" + bytes(80), "invalid_header"),
        (MODEL_MAGIC + struct.pack(">I", 3) + b"\xff\xfe{" + bytes(80), "invalid_header"),
        (MODEL_MAGIC + struct.pack(">I", 2**32 - 1), "header length"),
    ],
    ids=[
        "tombstone",
        "empty",
        "garbage",
        "old-framing",
        "an-update",
        "no-signature",
        "bad-header",
        "bad-utf8",
        "length",
    ],
)
def test_malformed_bytes_are_ignored_with_the_decoders_reason(value: bytes | None, expected: str) -> None:
    outcome = ignored(check(value), IgnoreReason.MALFORMED)
    assert expected in outcome.detail


def test_an_oversized_message_is_ignored_before_it_is_parsed() -> None:
    outcome = check_signed_version(version_message(5), JOB_KEY.private_key.public_key(), MODEL, max_message_bytes=100)
    assert "oversized" in ignored(outcome, IgnoreReason.MALFORMED).detail


# ── the chain a client holds ───────────────────────────────────────────────────────────────────────────────────────


def chain() -> VersionChain:
    return VersionChain(JOB_KEY.public_key, MODEL)


def newest_version(versions: VersionChain) -> int | None:
    return None if versions.newest is None else versions.newest.header.version


def test_versions_that_chain_are_taken_in_order() -> None:
    versions = chain()
    for version in range(4):
        taken = versions.offer(version_message(version))
        assert isinstance(taken, DecodedModel)
        assert taken.header.version == version
    assert newest_version(versions) == 3


def test_forgeries_do_not_move_the_newest_version() -> None:
    versions = chain()
    versions.offer(version_message(0))
    for forged in (version_message(999, signer=None), version_message(999, signer=OTHER_KEY.sign), b"\x00" * 99):
        assert isinstance(versions.offer(forged), IgnoredVersion)
    assert newest_version(versions) == 0
    assert isinstance(versions.offer(version_message(1)), DecodedModel)


def test_a_republished_version_is_neither_taken_nor_ignored() -> None:
    versions = chain()
    versions.offer(version_message(0))
    versions.offer(version_message(1))
    assert versions.offer(version_message(1)) is None
    assert versions.offer(version_message(0)) is None
    assert newest_version(versions) == 1


def test_the_same_version_number_with_other_parameters_is_a_conflict() -> None:
    versions = chain()
    versions.offer(version_message(0))
    versions.offer(version_message(1))
    outcome = ignored(versions.offer(version_message(1, parameters(77))), IgnoreReason.CONFLICTING_VERSION)
    assert parameter_hash(parameters(1)) in outcome.detail


def test_a_parent_hash_that_does_not_match_the_held_parent_breaks_the_chain() -> None:
    versions = chain()
    versions.offer(version_message(0))
    versions.offer(version_message(1))
    outcome = versions.offer(version_message(2, parent=(1, "ee" * 32)))
    assert "names parent 1 with hash " + "ee" * 32 in ignored(outcome, IgnoreReason.BROKEN_CHAIN).detail
    skipping_ahead = versions.offer(version_message(5, parent=(0, "ee" * 32)))
    ignored(skipping_ahead, IgnoreReason.BROKEN_CHAIN)
    assert newest_version(versions) == 1


def test_a_newer_version_without_a_parent_breaks_the_chain_once_one_is_held() -> None:
    versions = chain()
    versions.offer(version_message(0))
    payload, payload_hash = tensors_payload(parameters(3))
    header = ModelHeader(
        model_name=MODEL,
        version=3,
        parent_version=None,
        parent_parameter_hash=None,
        parameter_hash=parameter_hash(parameters(3)),
        payload_sha256=payload_hash,
        created_at=CREATED_AT,
    )
    ignored(versions.offer(encode_model(header, payload, JOB_KEY.sign)), IgnoreReason.BROKEN_CHAIN)
    first = chain()
    assert isinstance(first.offer(encode_model(header, payload, JOB_KEY.sign)), DecodedModel)


def test_a_parent_never_seen_cannot_be_checked_so_the_signature_decides() -> None:
    versions = chain()
    assert isinstance(versions.offer(version_message(7)), DecodedModel)  # a client starting late (or compaction)
    versions.offer(version_message(8))
    assert isinstance(versions.offer(version_message(12, parent=(11, "ab" * 32))), DecodedModel)
    assert newest_version(versions) == 12


def test_the_chain_remembers_a_bounded_number_of_hashes() -> None:
    versions = VersionChain(JOB_KEY.public_key, MODEL, remembered_versions=2)
    for version in range(5):
        versions.offer(version_message(version))
    assert list(versions._hashes) == [3, 4]


def test_the_chain_refuses_a_public_key_that_is_not_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 raw bytes, got 31"):
        VersionChain(bytes(31), MODEL)


# ── where a client finds the job's public key ──────────────────────────────────────────────────────────────────────


def test_the_public_key_from_the_environment(tmp_path: Path) -> None:
    key = JOB_KEY.public_key
    assert job_public_key_from_env({JOB_PUBLIC_KEY_VARIABLE: key.hex()}) == key
    path = tmp_path / "fedstream-job.pub"
    path.write_text(key.hex() + "\n")
    assert job_public_key_from_env({JOB_PUBLIC_KEY_FILE_VARIABLE: str(path)}) == key


def test_a_malformed_public_key_names_where_it_came_from() -> None:
    with pytest.raises(ValueError, match=f"{JOB_PUBLIC_KEY_VARIABLE}: not hex digits"):
        job_public_key_from_env({JOB_PUBLIC_KEY_VARIABLE: "xyz"})
    with pytest.raises(ValueError, match=f"{JOB_PUBLIC_KEY_VARIABLE}: .* 32 raw bytes, got 3"):
        job_public_key_from_env({JOB_PUBLIC_KEY_VARIABLE: "abcdef"})


def test_the_local_stacks_key_is_found_and_its_absence_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDSTREAM_HOME", str(tmp_path / "state"))
    with pytest.raises(MissingJobKeyError, match=JOB_PUBLIC_KEY_FILE_VARIABLE):
        job_public_key_from_env({})
    assert not (tmp_path / "state").exists(), "looking for the key must not create the state folder"
    from streaming_jobs.signing_key import local_job_key

    made = local_job_key()
    assert job_public_key_from_env({}) == made.public_key
    assert local_job_key().public_key == made.public_key, "the local key is made once"
