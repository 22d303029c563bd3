"""Property tests: nothing on ``fl.models`` but a version the job's key signed moves a client, and nothing raises.

Hostile bytes (random, truncated, bit-flipped, signed by other keys, forged headers) go through the check a
client runs and through ``GlobalModelSubscriber.poll``/``newest`` with a stand-in for the Kafka consumer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers import transport
from producers.transport import GlobalModelSubscriber
from producers.trusted_versions import IgnoredVersion, IgnoreReason, check_signed_version
from schemas.kafka_settings import KafkaSettings
from schemas.topics import MODELS_TOPIC
from schemas.wire import MODEL_MAGIC, SIGNATURE_BYTES, DecodedModel, frame, model_signed_bytes
from tests.unit.test_trusted_versions import JOB_KEY, MODEL, parameters, version_message

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
JOB_PUBLIC = JOB_KEY.private_key.public_key()
MESSAGE = version_message(5)
HEADER_END = 8 + struct.unpack(">I", MESSAGE[4:8])[0]
PAYLOAD = MESSAGE[HEADER_END + SIGNATURE_BYTES :]


def untrusted(value: bytes | None) -> IgnoredVersion:
    outcome = check_signed_version(value, JOB_PUBLIC, MODEL)
    assert isinstance(outcome, IgnoredVersion), f"a hostile message was trusted: {value!r:.200}"
    return outcome


@settings(FAST, max_examples=1000)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_never_trusted(value: bytes) -> None:
    untrusted(value)


@settings(FAST, max_examples=500)
@given(st.integers(0, 2**32 - 1), st.binary(max_size=1024))
def test_arbitrary_bytes_behind_the_model_magic_are_never_trusted(header_length: int, rest: bytes) -> None:
    untrusted(MODEL_MAGIC + struct.pack(">I", header_length) + rest)


@settings(FAST, max_examples=300)
@given(st.integers(0, len(MESSAGE) - 1))
def test_every_truncation_of_a_signed_version_is_ignored(length: int) -> None:
    untrusted(MESSAGE[:length])


@settings(FAST, max_examples=1000)
@given(st.integers(0, 8 * len(MESSAGE) - 1))
def test_every_single_bit_flip_of_a_signed_version_is_ignored(bit: int) -> None:
    flipped = bytearray(MESSAGE)
    flipped[bit // 8] ^= 1 << (bit % 8)
    untrusted(bytes(flipped))


@settings(FAST, max_examples=500)
@given(st.lists(st.tuples(st.integers(0, len(MESSAGE) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_mutations_of_a_signed_version_are_ignored(changes: list[tuple[int, int]]) -> None:
    mutated = bytearray(MESSAGE)
    for position, value in changes:
        mutated[position] = value
    if bytes(mutated) != MESSAGE:
        untrusted(bytes(mutated))


@settings(FAST, max_examples=200)
@given(st.binary(min_size=32, max_size=32))
def test_a_version_signed_with_any_other_key_is_ignored(seed: bytes) -> None:
    other = Ed25519PrivateKey.from_private_bytes(seed)
    if seed == bytes(range(32)):
        return  # the job's own key
    assert untrusted(version_message(999, signer=other.sign)).reason is IgnoreReason.BAD_SIGNATURE


@settings(FAST, max_examples=500)
@given(st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_any_header_the_job_signed_is_checked_without_raising(header_json: bytes) -> None:
    # Even the job's key over a nonsensical header yields a reason, never an exception.
    value = frame(MODEL_MAGIC, header_json, JOB_KEY.sign(model_signed_bytes(header_json)) + PAYLOAD)
    outcome = check_signed_version(value, JOB_PUBLIC, MODEL)
    assert isinstance(outcome, IgnoredVersion | DecodedModel)


# ── through GlobalModelSubscriber, with a stand-in consumer ────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


class FakeConsumer:
    """The part of ``KafkaConsumer`` the subscriber uses; ``poll`` hands out ``batches``, one per call."""

    batches: ClassVar[list[list[Record]]] = []

    def __init__(self, **options: Any) -> None:
        self.closed = False

    def partitions_for_topic(self, topic: str) -> set[int]:
        assert topic == MODELS_TOPIC
        return {0}

    def assign(self, partitions: list[Any]) -> None:
        pass

    def seek_to_beginning(self, *partitions: Any) -> None:
        pass

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[str, list[Record]]:
        return {"fl.models-0": FakeConsumer.batches.pop(0)} if FakeConsumer.batches else {}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(transport, "KafkaConsumer", FakeConsumer)
    FakeConsumer.batches = []
    yield
    FakeConsumer.batches = []


def subscriber() -> GlobalModelSubscriber:
    return GlobalModelSubscriber(KafkaSettings(), MODEL, JOB_KEY.public_key)


def hostile_messages() -> st.SearchStrategy[bytes | None]:
    valid = version_message(3)
    return st.one_of(
        st.none(),
        st.binary(max_size=600),
        st.integers(0, len(valid) - 1).map(lambda length: valid[:length]),
        st.integers(0, 8 * len(valid) - 1).map(lambda bit: _flip(valid, bit)),
        st.integers(1, 10**6).map(lambda version: version_message(version, signer=None)),
        st.integers(1, 10**6).map(
            lambda version: version_message(version, signer=Ed25519PrivateKey.from_private_bytes(bytes(32)).sign)
        ),
        st.just(b"FSM1" + version_message(1000)[4:]),
    )


def _flip(value: bytes, bit: int) -> bytes:
    flipped = bytearray(value)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


@settings(FAST, max_examples=150)
@given(
    hostile=st.lists(hostile_messages(), max_size=12),
    valid_count=st.integers(1, 4),
    positions=st.randoms(use_true_random=False),
    batch_size=st.integers(1, 5),
)
def test_the_subscriber_takes_exactly_the_signed_chain_among_hostile_messages(
    fake_kafka: None, hostile: list[bytes | None], valid_count: int, positions: Any, batch_size: int
) -> None:
    valid = [version_message(version) for version in range(valid_count)]
    stream: list[bytes | None] = list(hostile)
    for index, value in enumerate(valid):  # valid versions in order, hostile ones anywhere between them
        at = positions.randint(stream.index(valid[index - 1]) + 1 if index else 0, len(stream))
        stream.insert(at, value)
    records = [Record(MODEL.encode(), value, 0, offset) for offset, value in enumerate(stream)]
    records.insert(positions.randint(0, len(records)), Record(b"another-model", b"whatever it holds", 0, -1))
    records.insert(positions.randint(0, len(records)), Record(None, version_message(10**7, signer=None), 0, -2))
    FakeConsumer.batches = [records[start : start + batch_size] for start in range(0, len(records), batch_size)]

    client = subscriber()
    newest = None
    while FakeConsumer.batches:
        newest = client.poll(0)
    assert newest == valid_count - 1
    assert client.newest(timeout_seconds=0).parameters.keys() == parameters(valid_count - 1).keys()
    assert (
        client.newest(timeout_seconds=0).header.parameter_hash
        == check_signed_version(valid[-1], JOB_PUBLIC, MODEL).header.parameter_hash
    )  # type: ignore[union-attr]
    assert client.ignored_count == len(hostile)
    assert all(ignored.offset is not None and ignored.offset >= 0 for ignored in client.ignored)


def test_the_subscriber_logs_why_it_ignored_a_message(fake_kafka: None, caplog: pytest.LogCaptureFixture) -> None:
    FakeConsumer.batches = [
        [
            Record(MODEL.encode(), version_message(0), 0, 0),
            Record(MODEL.encode(), version_message(999, signer=None), 0, 1),
            Record(MODEL.encode(), b"\x00garbage", 0, 2),
        ]
    ]
    client = subscriber()
    with caplog.at_level("WARNING", logger="producers.transport"):
        assert client.poll(0) == 0
    assert [record.getMessage() for record in caplog.records] == [
        "ignored a message for 'har-cnn' on fl.models: unsigned claiming version 999 (partition 0, offset 1): "
        "the signature slot holds zeros",
        "ignored a message for 'har-cnn' on fl.models: malformed (partition 0, offset 2): malformed_envelope: "
        "magic b'\\x00gar' is not b'FSM2'",
    ]
    assert [ignored.reason for ignored in client.ignored] == [IgnoreReason.UNSIGNED, IgnoreReason.MALFORMED]


def test_newest_waits_past_forgeries_and_times_out_without_a_signed_version(fake_kafka: None) -> None:
    FakeConsumer.batches = [[Record(MODEL.encode(), version_message(999, signer=None), 0, 0)]]
    client = subscriber()
    with pytest.raises(TimeoutError, match=r"signed by the job.s key .* \(1 messages ignored\)"):
        client.newest(timeout_seconds=0.3)


def test_a_checker_failure_is_an_ignored_message_not_a_crash(fake_kafka: None, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeConsumer.batches = [[Record(MODEL.encode(), version_message(0), 0, 0)]]
    client = subscriber()

    def broken(value: bytes | None) -> None:
        raise RuntimeError("a bug in the checker")

    monkeypatch.setattr(client._chain, "offer", broken)
    assert client.poll(0) is None
    (ignored,) = client.ignored
    assert ignored.reason is IgnoreReason.MALFORMED
    assert "RuntimeError: a bug in the checker" in ignored.detail
