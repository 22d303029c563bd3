"""The local broker with SCRAM-SHA-512 over TLS: an enrolled client works, every other one is refused.

The broker's only client listener is SASL_SSL, so a message that gets through at all got through authenticated
and encrypted. Refusals are asserted twice: the error a caller sees (kafka-python gives up bootstrapping with
``KafkaTimeoutError``) and the reason kafka-python logged for each refused connection.
"""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (
    InvalidReceiveError,
    KafkaConnectionError,
    KafkaTimeoutError,
    RequestTimedOutError,
    SaslAuthenticationFailedError,
)
from pydantic import SecretStr

from schemas.kafka_settings import KafkaSettings
from streaming_jobs.stack.certificates import create_broker_certificates
from streaming_jobs.stack.secure_broker import SecureKafkaBroker
from tests.conftest import free_port_pair

pytestmark = pytest.mark.stack

JOB_USER = "fedstream-job"
JOB_PASSWORD = secrets.token_urlsafe(24)
REFUSAL_TIMEOUT_MS = 2000
"""How long a refused client keeps trying before kafka-python gives up: short, so the test does not hang."""


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafkaBroker]:
    home = tmp_path_factory.mktemp("fedstream-secure")
    port = free_port_pair(int(os.environ.get("FEDSTREAM_TEST_SECURE_KAFKA_PORT", "19192")))
    broker = SecureKafkaBroker({JOB_USER: JOB_PASSWORD}, port=port, home=home)
    try:
        broker.up(timeout_seconds=90)
        yield broker
    finally:
        broker.down()
        assert not broker.status().running, f"the secure broker is still running; see {broker.log_file}"


@pytest.fixture(scope="module")
def untrusted_ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the broker's certificate."""
    return create_broker_certificates(tmp_path_factory.mktemp("other-ca"), common_name="some other CA").ca_file


def _enrolled(broker: SecureKafkaBroker) -> KafkaSettings:
    """The job's settings, read from configuration as every fedstream party reads them."""
    return KafkaSettings.from_env(
        {
            "FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "FEDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "FEDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "FEDSTREAM_KAFKA_SASL_USERNAME": JOB_USER,
            "FEDSTREAM_KAFKA_SASL_PASSWORD": JOB_PASSWORD,
            "FEDSTREAM_KAFKA_SSL_CAFILE": str(broker.certificates.ca_file),
        }
    )


def _new_topic(settings: KafkaSettings) -> str:
    topic = f"secure-test-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**settings.admin_options())
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
        assert topic in admin.list_topics()
    finally:
        admin.close()
    return topic


def test_the_broker_listens_only_for_sasl_ssl(secure_broker: SecureKafkaBroker) -> None:
    config = secure_broker.config_file.read_text().splitlines()
    assert f"listeners=SASL_SSL://localhost:{secure_broker.port},CONTROLLER://localhost:{secure_broker.port + 1}" in (
        config
    )
    assert "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL" in config
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512" in config


def test_an_enrolled_client_creates_a_topic_and_exchanges_a_message(
    secure_broker: SecureKafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _enrolled(secure_broker)
    caplog.set_level(logging.INFO, logger="kafka")
    topic = _new_topic(settings)
    payload = os.urandom(4096)

    producer = KafkaProducer(**settings.producer_options())
    try:
        metadata = producer.send(topic, key=b"client-a", value=payload).get(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(**settings.consumer_options(), enable_auto_commit=False, consumer_timeout_ms=20_000)
    try:
        partition = TopicPartition(topic, metadata.partition)
        consumer.assign([partition])
        consumer.seek(partition, metadata.offset)
        received = next(iter(consumer))
    finally:
        consumer.close()
    assert (received.key, received.value) == (b"client-a", payload)
    assert f"Authenticated as {JOB_USER} via SASL / SCRAM-SHA-512" in caplog.text


@dataclass(frozen=True)
class Refusal:
    """What kafka-python logged while a client tried, and failed, to bootstrap from the broker."""

    reasons: list[BaseException]
    """Why each connection attempt failed."""
    messages: list[str]

    @property
    def tls_handshakes(self) -> int:
        """Connections whose TLS handshake completed (the client trusted the broker's certificate)."""
        return sum("KafkaSSLTransport" in message and ": connected to " in message for message in self.messages)

    @property
    def authenticated(self) -> bool:
        """Whether any connection passed SASL authentication."""
        return any("Authenticated as" in message for message in self.messages)


def _refused(client: Callable[..., object], settings: KafkaSettings, caplog: pytest.LogCaptureFixture) -> Refusal:
    """Connect with ``client``; assert kafka-python gives up bootstrapping, and return what it logged."""
    caplog.clear()
    options = settings.admin_options() if client is KafkaAdminClient else settings.producer_options()
    if client is KafkaProducer:
        options["max_block_ms"] = REFUSAL_TIMEOUT_MS
    with caplog.at_level(logging.INFO, logger="kafka"), pytest.raises(KafkaTimeoutError, match="bootstrap"):
        connected = client(**options, bootstrap_timeout_ms=REFUSAL_TIMEOUT_MS, request_timeout_ms=REFUSAL_TIMEOUT_MS)
        connected.close()  # type: ignore[attr-defined]  # only reached if the broker let the client in
    records = [record for record in caplog.records if record.name.startswith("kafka")]
    reasons = [
        argument
        for record in records
        for argument in (record.args if isinstance(record.args, tuple) else ())
        # Timeouts are the test's own deadline cutting the last attempt short, not a reason the broker gave.
        if isinstance(argument, BaseException) and not isinstance(argument, (KafkaTimeoutError, RequestTimedOutError))
    ]
    assert reasons, "kafka-python logged no reason for the refused connections"
    return Refusal(reasons=reasons, messages=[record.getMessage() for record in records])


def _disconnected(reason: BaseException) -> bool:
    return isinstance(reason, KafkaConnectionError) and "socket disconnected" in str(reason)


def _dropped_by_the_tls_listener(reason: BaseException) -> bool:
    """The listener closed a connection that did not start with a TLS handshake, or sent it a TLS alert.

    A TLS alert record starts with bytes 15 03 03 00, which a plaintext client reads as a frame of 0x15030300 bytes.
    """
    return _disconnected(reason) or (isinstance(reason, InvalidReceiveError) and str(0x15030300) in str(reason))


@pytest.mark.parametrize("client", [KafkaAdminClient, KafkaProducer], ids=["admin", "producer"])
def test_a_plaintext_client_without_credentials_is_refused(
    secure_broker: SecureKafkaBroker, client: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    refusal = _refused(client, KafkaSettings(bootstrap_servers=secure_broker.bootstrap_servers), caplog)
    assert all(_dropped_by_the_tls_listener(reason) for reason in refusal.reasons), refusal.reasons
    assert (refusal.tls_handshakes, refusal.authenticated) == (0, False)


def test_the_right_password_without_tls_is_refused(
    secure_broker: SecureKafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    no_tls = KafkaSettings(
        bootstrap_servers=secure_broker.bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=JOB_USER,
        sasl_password=SecretStr(JOB_PASSWORD),
    )
    refusal = _refused(KafkaAdminClient, no_tls, caplog)
    assert all(_dropped_by_the_tls_listener(reason) for reason in refusal.reasons), refusal.reasons
    assert (refusal.tls_handshakes, refusal.authenticated) == (0, False)


@pytest.mark.parametrize("client", [KafkaAdminClient, KafkaProducer], ids=["admin", "producer"])
@pytest.mark.parametrize(
    ("username", "password"),
    [(JOB_USER, "not-the-password"), ("not-enrolled", JOB_PASSWORD)],
    ids=["wrong-password", "unknown-user"],
)
def test_wrong_scram_credentials_are_refused_after_tls(
    secure_broker: SecureKafkaBroker,
    client: Callable[..., object],
    username: str,
    password: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The enrolled settings with one field changed: they work with the right credentials (test above).
    settings = _enrolled(secure_broker).model_copy(
        update={"sasl_username": username, "sasl_password": SecretStr(password)}
    )
    refusal = _refused(client, settings, caplog)
    assert refusal.tls_handshakes > 0, "the TLS handshake should succeed; only SASL should refuse"
    assert not refusal.authenticated
    # The broker answers SaslAuthenticationFailed and closes the connection. kafka-python 3.0.12 drops data that
    # arrives in the same read as the close, so some attempts see only the disconnect, never another error.
    assert all(
        isinstance(reason, SaslAuthenticationFailedError) or _disconnected(reason) for reason in refusal.reasons
    ), refusal.reasons
    failures = [reason for reason in refusal.reasons if isinstance(reason, SaslAuthenticationFailedError)]
    assert all("invalid credentials" in str(failure) for failure in failures), failures


@pytest.mark.parametrize("trusted", ["another CA", "the system's CAs"])
def test_a_client_that_does_not_trust_the_broker_ca_is_refused(
    secure_broker: SecureKafkaBroker, untrusted_ca_file: Path, trusted: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _enrolled(secure_broker).model_copy(
        update={"ssl_cafile": str(untrusted_ca_file) if trusted == "another CA" else None}
    )
    refusal = _refused(KafkaAdminClient, settings, caplog)
    assert any("CERTIFICATE_VERIFY_FAILED" in str(reason) for reason in refusal.reasons), refusal.reasons
    assert (refusal.tls_handshakes, refusal.authenticated) == (0, False)


def test_spark_reads_the_secure_broker_with_the_jobs_source_options(  # type: ignore[no-untyped-def]
    spark, secure_broker: SecureKafkaBroker
) -> None:
    settings = _enrolled(secure_broker)
    topic = _new_topic(settings)
    producer = KafkaProducer(**settings.producer_options())
    try:
        for index in range(3):
            producer.send(topic, key=f"client-{index}".encode(), value=bytes([index]) * 100)
        producer.flush(timeout=30)
    finally:
        producer.close()

    rows = (
        spark.read.format("kafka")
        .options(**settings.spark_source_options())
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
        .load()
        .selectExpr("CAST(key AS STRING) AS key", "value")
        .collect()
    )
    assert sorted((row.key, bytes(row.value)) for row in rows) == [
        (f"client-{index}", bytes([index]) * 100) for index in range(3)
    ]
