"""Chunked global versions: a client checks every chunk as it comes and takes a version once it is complete."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from producers.trusted_versions import (
    IgnoredVersion,
    IgnoreReason,
    VersionChain,
    check_signed_chunk,
)
from schemas.chunks import decode_model_chunk, encode_model_chunks
from schemas.messages import ModelHeader
from schemas.rejections import Rejection
from schemas.tensors import Tensors, parameter_hash
from schemas.wire import DecodedModel, encode_model, tensors_payload
from streaming_jobs.signing_key import JobSigningKey

MODEL = "har-cnn"
JOB_KEY = JobSigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))), "test")
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
CREATED_AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LIMIT = 4096
"""Small enough that a version of ``parameters`` needs several chunks."""
READER_LIMIT = 4 * LIMIT
"""What the client reads: a whole version of ``parameters`` fits it (the job's limit may be lower)."""


def parameters(seed: int) -> Tensors:
    values = np.random.default_rng(seed).standard_normal(3000).astype(np.float32)
    return {"conv.weight": values[:2400].reshape(20, 10, 12), "conv.bias": values[2400:2410], "head": values[2410:]}


def header(version: int, params: Tensors, model_name: str = MODEL, parent: int | None = -1) -> ModelHeader:
    parent_version = version - 1 if parent == -1 else parent
    return ModelHeader(
        model_name=model_name,
        version=version,
        parent_version=None if version == 0 or parent_version is None else parent_version,
        parent_parameter_hash=(
            None if version == 0 or parent_version is None else parameter_hash(parameters(parent_version))
        ),
        parameter_hash=parameter_hash(params),
        payload_sha256="0" * 64,
        created_at=CREATED_AT,
    )


def chunks(version: int, *, signer: object = JOB_KEY.sign, model_name: str = MODEL) -> list[bytes]:
    params = parameters(version)
    values = encode_model_chunks(
        header(version, params, model_name),
        params,
        max_message_bytes=LIMIT,
        signer=signer,  # type: ignore[arg-type]
    )
    assert len(values) > 2
    return values


def whole(version: int) -> bytes:
    params = parameters(version)
    payload, payload_hash = tensors_payload(params)
    fields = header(version, params).model_dump(exclude={"payload_sha256"})
    return encode_model(ModelHeader(**fields, payload_sha256=payload_hash), payload, JOB_KEY.sign)


def chain(**options: int) -> VersionChain:
    return VersionChain(JOB_KEY.public_key, MODEL, max_message_bytes=READER_LIMIT, **options)


def taken(outcome: object) -> DecodedModel:
    assert isinstance(outcome, DecodedModel), outcome
    return outcome


def ignored(outcome: object, reason: IgnoreReason) -> IgnoredVersion:
    assert isinstance(outcome, IgnoredVersion), outcome
    assert outcome.reason is reason, outcome
    return outcome


def assert_exactly(model: DecodedModel, version: int) -> None:
    expected = parameters(version)
    assert model.header.version == version and set(model.parameters) == set(expected)
    for name, values in expected.items():
        assert model.parameters[name].dtype == np.float32
        np.testing.assert_array_equal(model.parameters[name], values)  # float32 travels exactly


# ── one chunk, checked against the job's key ───────────────────────────────────────────────────────────────────────


def test_a_chunk_the_job_signed_is_trusted() -> None:
    chunk = check_signed_chunk(chunks(3)[1], JOB_KEY.private_key.public_key(), MODEL)
    assert not isinstance(chunk, IgnoredVersion)
    assert chunk.header.version == 3 and chunk.index == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (chunks(3, signer=OTHER_KEY.sign)[0], IgnoreReason.BAD_SIGNATURE),
        (chunks(3, signer=None)[0], IgnoreReason.UNSIGNED),
        (chunks(3, model_name="other-model")[0], IgnoreReason.OTHER_MODEL),
        (chunks(3)[0][:-1], IgnoreReason.MALFORMED),
        (b"FMC1", IgnoreReason.MALFORMED),
    ],
    ids=["forged", "unsigned", "other-model", "truncated", "framing"],
)
def test_a_bad_chunk_is_ignored_with_its_reason(value: bytes, reason: IgnoreReason) -> None:
    ignored(check_signed_chunk(value, JOB_KEY.private_key.public_key(), MODEL), reason)
    ignored(chain().offer(value), reason)


def test_an_oversized_chunk_is_ignored() -> None:
    outcome = check_signed_chunk(chunks(3)[0], JOB_KEY.private_key.public_key(), MODEL, max_message_bytes=100)
    assert "oversized" in ignored(outcome, IgnoreReason.MALFORMED).detail


# ── assembling in the chain ────────────────────────────────────────────────────────────────────────────────────────


def test_shuffled_chunks_with_duplicates_forgeries_and_another_models_make_exactly_the_version() -> None:
    good = chunks(4)
    noise = [*chunks(5, signer=OTHER_KEY.sign), *chunks(6, model_name="other-model")]
    stream = [*good, *good[:2], *noise]
    random.Random(7).shuffle(stream)
    last_good = max(index for index, value in enumerate(stream) if value in good)
    versions = chain()
    outcomes = [versions.offer(value) for value in stream]
    reasons = {outcome.reason for outcome in outcomes if isinstance(outcome, IgnoredVersion)}
    assert reasons == {IgnoreReason.BAD_SIGNATURE, IgnoreReason.OTHER_MODEL}
    assert sum(isinstance(outcome, IgnoredVersion) for outcome in outcomes) == len(noise)
    assert [index for index, outcome in enumerate(outcomes) if isinstance(outcome, DecodedModel)] == [last_good]
    assert versions.newest is not None
    assert_exactly(versions.newest, 4)
    assert versions.incomplete_versions == 0 and versions.held_chunks == 0


def test_a_complete_version_is_not_taken_again_and_its_late_chunks_are_not_held() -> None:
    versions = chain()
    good = chunks(4)
    outcomes = [versions.offer(value) for value in good]
    assert outcomes[:-1] == [None] * (len(good) - 1)
    assert_exactly(taken(outcomes[-1]), 4)
    assert [versions.offer(value) for value in good] == [None] * len(good)
    assert versions.held_chunks == 0


def test_incomplete_versions_are_bounded_and_the_newest_survive() -> None:
    versions = chain(max_incomplete_versions=2)
    for version in range(1, 40):
        for value in chunks(version)[:-1]:  # every version but its last chunk
            assert versions.offer(value) is None
            assert versions.incomplete_versions <= 2
    assert versions.incomplete_versions == 2
    assert versions.held_chunks == 2 * (len(chunks(1)) - 1)
    assert versions.newest is None
    assert_exactly(taken(versions.offer(chunks(39)[-1])), 39)  # the newest was still held
    assert versions.offer(chunks(5)[-1]) is None  # an older version gave way long ago, and is older now anyway
    assert versions.incomplete_versions == 0


def test_an_older_version_gives_way_to_newer_ones_when_full() -> None:
    versions = chain(max_incomplete_versions=2)
    for version in (8, 9):
        versions.offer(chunks(version)[0])
    assert versions.offer(chunks(7)[0]) is None
    assert versions.incomplete_versions == 2
    for value in chunks(7)[1:]:
        assert versions.offer(value) is None  # never complete: its earlier chunks are gone
    assert versions.newest is None


def test_taking_a_version_drops_the_chunks_of_versions_no_longer_newer() -> None:
    versions = chain()
    versions.offer(chunks(3)[0])
    versions.offer(chunks(6)[0])
    assert versions.incomplete_versions == 2
    assert_exactly(taken(versions.offer(whole(5))), 5)
    assert versions.incomplete_versions == 1  # version 3's chunk went, version 6's stays
    for value in chunks(6)[1:]:
        outcome = versions.offer(value)
    assert_exactly(taken(outcome), 6)


def test_a_whole_version_after_chunked_ones_chains_normally() -> None:
    versions = chain()
    for version in (1, 2):
        outcomes = [versions.offer(value) for value in chunks(version)]
        assert_exactly(taken(outcomes[-1]), version)
    assert_exactly(taken(versions.offer(whole(3))), 3)
    outcomes = [versions.offer(value) for value in chunks(4)]
    assert_exactly(taken(outcomes[-1]), 4)


def test_a_chunked_version_that_breaks_the_chain_is_ignored_once_complete() -> None:
    versions = chain()
    taken(versions.offer(whole(2)))
    params = parameters(3)
    wrong_parent = header(3, params).model_copy(update={"parent_parameter_hash": "ab" * 32})
    values = encode_model_chunks(wrong_parent, params, max_message_bytes=LIMIT, signer=JOB_KEY.sign)
    outcomes = [versions.offer(value) for value in values]
    assert outcomes[:-1] == [None] * (len(values) - 1)
    ignored(outcomes[-1], IgnoreReason.BROKEN_CHAIN)
    assert versions.newest is not None and versions.newest.header.version == 2


def test_chunked_parameters_that_do_not_match_the_signed_hash_are_ignored_once_complete() -> None:
    versions = chain()
    params = parameters(3)
    lying = header(3, params).model_copy(update={"parameter_hash": "cd" * 32})
    values = encode_model_chunks(lying, params, max_message_bytes=LIMIT, signer=JOB_KEY.sign)
    outcomes = [versions.offer(value) for value in values]
    ignored(outcomes[-1], IgnoreReason.PARAMETER_HASH_MISMATCH)
    assert versions.newest is None and versions.held_chunks == 0


def test_a_chunk_of_a_taken_version_number_with_other_parameters_conflicts() -> None:
    versions = chain()
    taken(versions.offer(whole(3)))
    params = parameters(30)
    other = header(3, params)
    values = encode_model_chunks(other, params, max_message_bytes=LIMIT, signer=JOB_KEY.sign)
    ignored(versions.offer(values[0]), IgnoreReason.CONFLICTING_VERSION)


def test_the_version_a_chunk_names_is_the_decoders() -> None:
    chunk = decode_model_chunk(chunks(2)[0])
    assert not isinstance(chunk, Rejection)
    assert chunk.header.layout is not None and chunk.header.version == 2


def test_at_least_one_incomplete_version_must_be_held() -> None:
    with pytest.raises(ValueError, match="max_incomplete_versions"):
        chain(max_incomplete_versions=0)
