"""The local broker with SCRAM-SHA-512 over TLS and least-privilege ACLs, and signed versions on ``fl.models``.

The broker's only client listener is SASL_SSL, so a message that gets through at all got through authenticated
and encrypted. Refusals are asserted twice: the error a caller sees (kafka-python gives up bootstrapping with
``KafkaTimeoutError``) and the reason kafka-python logged for each refused connection; fedstream's own error
(``KafkaUnreachableError``, from a probe of the broker) names that reason and never the password. Past authentication,
the authorizer lets each role do only its part (a client writes ``fl.updates`` and reads ``fl.models``, the job
the reverse, an auditor nothing), and a version that reaches ``fl.models`` without the job's signature anyway
is ignored by every client.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (
    InvalidReceiveError,
    KafkaConnectionError,
    KafkaTimeoutError,
    RequestTimedOutError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
)
from pydantic import SecretStr

from devstack.certificates import create_broker_certificates
from devstack.secure_broker import KafkaLogin, SecureKafkaBroker
from producers.transport import GlobalModelSubscriber, UpdatePublisher
from producers.trusted_versions import IgnoreReason
from schemas.kafka_diagnosis import KafkaUnreachableError, explain_connection_failure
from schemas.kafka_settings import KafkaSettings
from schemas.topics import MODELS_TOPIC, UPDATES_TOPIC
from tests.conftest import free_port_pair
from tests.unit.test_trusted_versions import JOB_KEY, version_message

pytestmark = pytest.mark.stack

JOB_USER = "fedstream-job"
JOB_PASSWORD = secrets.token_urlsafe(24)
CLIENT_USER = "device-1"
CLIENT_PASSWORD = secrets.token_urlsafe(24)
AUDITOR_USER = "auditor-1"
AUDITOR_PASSWORD = secrets.token_urlsafe(24)
LOGINS = {
    JOB_USER: KafkaLogin("job", JOB_PASSWORD),
    CLIENT_USER: KafkaLogin("client", CLIENT_PASSWORD),
    AUDITOR_USER: KafkaLogin("auditor", AUDITOR_PASSWORD),
}
REFUSAL_TIMEOUT_MS = 2000
"""How long a refused client keeps trying before kafka-python gives up: short, so the test does not hang."""


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafkaBroker]:
    home = tmp_path_factory.mktemp("fedstream-secure")
    port = free_port_pair(int(os.environ.get("FEDSTREAM_TEST_SECURE_KAFKA_PORT", "19192")))
    broker = SecureKafkaBroker(LOGINS, port=port, home=home)
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


def _login(broker: SecureKafkaBroker, username: str = JOB_USER) -> KafkaSettings:
    """One user's settings, read from configuration as every fedstream party reads them."""
    return KafkaSettings.from_env(
        {
            "FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "FEDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "FEDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "FEDSTREAM_KAFKA_SASL_USERNAME": username,
            "FEDSTREAM_KAFKA_SASL_PASSWORD": LOGINS[username].password,
            "FEDSTREAM_KAFKA_SSL_CAFILE": str(broker.certificates.ca_file),
        }
    )


def _enrolled(broker: SecureKafkaBroker) -> KafkaSettings:
    """The job's settings."""
    return _login(broker, JOB_USER)


def _publish(settings: KafkaSettings, topic: str, values: list[tuple[bytes | None, bytes | None]]) -> list[int]:
    """Send ``(key, value)`` pairs and wait for each acknowledgement; return their offsets."""
    producer = KafkaProducer(**settings.producer_options(), max_block_ms=10_000)
    try:
        return [producer.send(topic, key=key, value=value).get(timeout=30).offset for key, value in values]
    finally:
        producer.close()


def test_the_broker_listens_only_for_sasl_ssl_and_authorizes_every_request(secure_broker: SecureKafkaBroker) -> None:
    config = secure_broker.config_file.read_text().splitlines()
    assert f"listeners=SASL_SSL://localhost:{secure_broker.port},CONTROLLER://localhost:{secure_broker.port + 1}" in (
        config
    )
    assert "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL" in config
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512" in config
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in config
    assert "super.users=User:fedstream-broker" in config


def test_a_clients_update_reaches_the_job(secure_broker: SecureKafkaBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kafka")
    payload = os.urandom(4096)
    (offset,) = _publish(_login(secure_broker, CLIENT_USER), UPDATES_TOPIC, [(b"device-1", payload)])

    job = _login(secure_broker, JOB_USER)
    consumer = KafkaConsumer(**job.consumer_options(), enable_auto_commit=False, consumer_timeout_ms=20_000)
    try:
        partition = TopicPartition(UPDATES_TOPIC, 0)
        consumer.assign([partition])
        consumer.seek(partition, offset)
        received = next(iter(consumer))
    finally:
        consumer.close()
    assert (received.key, received.value) == (b"device-1", payload)
    assert f"Authenticated as {CLIENT_USER} via SASL / SCRAM-SHA-512" in caplog.text
    assert f"Authenticated as {JOB_USER} via SASL / SCRAM-SHA-512" in caplog.text


def test_a_client_cannot_publish_a_global_version(secure_broker: SecureKafkaBroker) -> None:
    forged = version_message(999, signer=None)
    with pytest.raises(TopicAuthorizationFailedError, match=MODELS_TOPIC):
        _publish(_login(secure_broker, CLIENT_USER), MODELS_TOPIC, [(b"har-cnn", forged)])


@pytest.mark.parametrize(
    ("username", "action", "topic"),
    [
        (CLIENT_USER, "read", UPDATES_TOPIC),  # another client's updates
        (JOB_USER, "write", UPDATES_TOPIC),
        (JOB_USER, "read", MODELS_TOPIC),
        (AUDITOR_USER, "read", MODELS_TOPIC),
        (AUDITOR_USER, "write", UPDATES_TOPIC),
    ],
)
def test_each_role_is_refused_what_it_does_not_need(
    secure_broker: SecureKafkaBroker, username: str, action: str, topic: str
) -> None:
    settings = _login(secure_broker, username)
    with pytest.raises(TopicAuthorizationFailedError):
        if action == "write":
            _publish(settings, topic, [(b"key", b"value")])
        else:
            consumer = KafkaConsumer(**settings.consumer_options(), enable_auto_commit=False)
            try:
                partition = TopicPartition(topic, 0)
                consumer.assign([partition])
                consumer.end_offsets([partition])  # refused without Describe (which Read or Write would imply)
                consumer.seek_to_beginning(partition)
                consumer.poll(timeout_ms=5000)  # refused with Describe but without Read
            finally:
                consumer.close()


@pytest.mark.parametrize("username", [CLIENT_USER, JOB_USER])
def test_only_the_broker_itself_creates_topics(secure_broker: SecureKafkaBroker, username: str) -> None:
    admin = KafkaAdminClient(**_login(secure_broker, username).admin_options())
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            admin.create_topics([NewTopic(f"secure-test-{uuid.uuid4().hex[:8]}", 1, 1)])
    finally:
        admin.close()


def test_forged_versions_on_fl_models_are_ignored_by_clients(secure_broker: SecureKafkaBroker) -> None:
    """Versions that get onto the topic with the job's login but without the job's key move no client."""
    model = f"forgery-{uuid.uuid4().hex[:8]}"
    key = model.encode()
    impostor = Ed25519PrivateKey.generate()
    _publish(
        _login(secure_broker, JOB_USER),
        MODELS_TOPIC,
        [
            (key, version_message(0, model_name=model)),
            (key, version_message(999, model_name=model, signer=None)),
            (key, version_message(999, model_name=model, signer=impostor.sign)),
            (key, b"FSM1" + version_message(998, model_name=model)[4:]),
            (key, os.urandom(300)),
            (key, version_message(1, model_name=model)[:-1]),
            (key, None),
            (key, version_message(1, model_name=model)),
        ],
    )
    client = GlobalModelSubscriber(_login(secure_broker, CLIENT_USER), model, JOB_KEY.public_key)
    try:
        assert client.wait_for_version_after(0, timeout_seconds=30) == 1
        assert client.poll(1.0) == 1
        newest = client.newest()
        assert (newest.header.version, newest.header.model_name) == (1, model)
        assert [ignored.reason for ignored in client.ignored] == [
            IgnoreReason.UNSIGNED,
            IgnoreReason.BAD_SIGNATURE,
            IgnoreReason.MALFORMED,  # the old, unsigned framing
            IgnoreReason.MALFORMED,  # random bytes
            IgnoreReason.MALFORMED,  # a truncated version
            IgnoreReason.MALFORMED,  # a tombstone
        ]
    finally:
        client.close()

    trusting_another_key = GlobalModelSubscriber(
        _login(secure_broker, CLIENT_USER), model, Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    )
    try:
        with pytest.raises(TimeoutError, match="signed by the job's key"):
            trusting_another_key.newest(timeout_seconds=3)
        assert trusting_another_key.ignored_count == 8
    finally:
        trusting_another_key.close()


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


def test_the_controller_listener_refuses_anonymous_connections(
    secure_broker: SecureKafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # Only the broker logs in there (SASL/PLAIN): an anonymous principal would otherwise be a super user.
    anonymous = KafkaSettings(bootstrap_servers=f"localhost:{secure_broker.controller_port}")
    refusal = _refused(KafkaAdminClient, anonymous, caplog)
    assert not refusal.authenticated


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


PROBE_TIMEOUT_SECONDS = 2.0


def _closed_port() -> int:
    """A port nothing listens on (bound by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unused:
        unused.bind(("localhost", 0))
        return int(unused.getsockname()[1])


def _sasl_plaintext(broker: SecureKafkaBroker) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=JOB_USER,
        sasl_password=SecretStr(JOB_PASSWORD),
    )


MISCONFIGURATIONS: dict[str, tuple[Callable[[SecureKafkaBroker, Path], KafkaSettings], list[str]]] = {
    "plaintext client": (
        lambda broker, _: KafkaSettings(bootstrap_servers=broker.bootstrap_servers),
        ["speaks TLS", "set security_protocol to SASL_SSL (SASL mechanisms enabled there: SCRAM-SHA-512)"],
    ),
    "sasl-plaintext client": (
        lambda broker, _: _sasl_plaintext(broker),
        ["speaks TLS", "set security_protocol to SASL_SSL"],
    ),
    "ssl without sasl": (
        lambda broker, _: KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers,
            security_protocol="SSL",
            ssl_cafile=str(broker.certificates.ca_file),
        ),
        ["asks for SASL (mechanisms enabled there: SCRAM-SHA-512)", "set security_protocol to SASL_SSL"],
    ),
    "wrong password": (
        lambda broker, _: _enrolled(broker).model_copy(update={"sasl_password": SecretStr("not-the-password")}),
        [f"refused the login of user {JOB_USER!r} with mechanism SCRAM-SHA-512", "invalid credentials"],
    ),
    "unknown user": (
        lambda broker, _: _enrolled(broker).model_copy(update={"sasl_username": "not-enrolled"}),
        ["refused the login of user 'not-enrolled' with mechanism SCRAM-SHA-512", "invalid credentials"],
    ),
    "mechanism not enabled": (
        lambda broker, _: _enrolled(broker).model_copy(update={"sasl_mechanism": "SCRAM-SHA-256"}),
        ["SASL mechanism SCRAM-SHA-256 is not enabled", "it enables SCRAM-SHA-512"],
    ),
    "wrong CA file": (
        lambda broker, untrusted: _enrolled(broker).model_copy(update={"ssl_cafile": str(untrusted)}),
        ["TLS certificate of localhost:", "does not verify against ssl_cafile", "certificate"],
    ),
    "system CAs": (
        lambda broker, _: _enrolled(broker).model_copy(update={"ssl_cafile": None}),
        ["does not verify against the system CAs"],
    ),
    "nothing listening": (
        lambda broker, _: _enrolled(broker).model_copy(update={"bootstrap_servers": f"localhost:{_closed_port()}"}),
        ["cannot reach localhost:", "(connection refused)"],
    ),
    "plaintext listener": (  # the controller listener is SASL_PLAINTEXT
        lambda broker, _: _enrolled(broker).model_copy(
            update={"bootstrap_servers": f"localhost:{broker.controller_port}"}
        ),
        ["does not speak TLS", "set security_protocol to SASL_PLAINTEXT (SASL mechanisms enabled there: PLAIN)"],
    ),
}


@pytest.mark.parametrize("case", MISCONFIGURATIONS)
def test_the_connection_probe_names_the_cause(
    secure_broker: SecureKafkaBroker, untrusted_ca_file: Path, case: str
) -> None:
    make_settings, expected = MISCONFIGURATIONS[case]
    settings = make_settings(secure_broker, untrusted_ca_file)
    explanation = explain_connection_failure(settings, timeout_seconds=PROBE_TIMEOUT_SECONDS)
    assert all(part in explanation for part in expected), explanation
    assert settings.sasl_password is None or settings.sasl_password.get_secret_value() not in explanation
    assert JOB_PASSWORD not in explanation


def test_the_probe_finds_nothing_wrong_with_working_settings(secure_broker: SecureKafkaBroker) -> None:
    explanation = explain_connection_failure(_enrolled(secure_broker), timeout_seconds=PROBE_TIMEOUT_SECONDS)
    assert explanation == f"no cause found: a probe connected and logged in as {JOB_USER!r}"


def test_a_refused_publisher_names_user_mechanism_and_cause(secure_broker: SecureKafkaBroker) -> None:
    settings = _login(secure_broker, CLIENT_USER).model_copy(update={"sasl_password": SecretStr("not-the-password")})
    with pytest.raises(KafkaUnreachableError) as raised:
        UpdatePublisher(settings, bootstrap_timeout_seconds=1.0)
    message = str(raised.value)
    assert isinstance(raised.value.__cause__, KafkaTimeoutError)
    assert f"bootstrap_servers {secure_broker.bootstrap_servers}, security_protocol SASL_SSL" in message
    assert f"sasl_mechanism SCRAM-SHA-512, sasl_username {CLIENT_USER!r}" in message
    assert f"ssl_cafile {secure_broker.certificates.ca_file}" in message
    assert f"refused the login of user {CLIENT_USER!r} with mechanism SCRAM-SHA-512" in message
    assert "not-the-password" not in message and CLIENT_PASSWORD not in message


def test_a_subscriber_that_does_not_trust_the_broker_names_the_ca_file(
    secure_broker: SecureKafkaBroker, untrusted_ca_file: Path
) -> None:
    settings = _login(secure_broker, CLIENT_USER).model_copy(update={"ssl_cafile": str(untrusted_ca_file)})
    with pytest.raises(KafkaUnreachableError, match="does not verify against ssl_cafile") as raised:
        GlobalModelSubscriber(settings, "any-model", JOB_KEY.public_key, bootstrap_timeout_seconds=1.0)
    assert str(untrusted_ca_file) in str(raised.value) and CLIENT_PASSWORD not in str(raised.value)
    assert isinstance(raised.value.__cause__, KafkaTimeoutError)


def test_spark_streams_fl_updates_with_the_jobs_login_and_source_options(  # type: ignore[no-untyped-def]
    spark, secure_broker: SecureKafkaBroker, tmp_path: Path
) -> None:
    """The job's own read, a streaming query, works under the job's ACLs (topic and Spark's consumer groups)."""
    run = uuid.uuid4().hex[:8]
    sent = [(f"device-{run}-{index}", bytes([index]) * 100) for index in range(3)]
    _publish(_login(secure_broker, CLIENT_USER), UPDATES_TOPIC, [(key.encode(), value) for key, value in sent])

    received: list[tuple[str, bytes]] = []
    query = (
        spark.readStream.format("kafka")
        .options(**_enrolled(secure_broker).spark_source_options())
        .option("subscribe", UPDATES_TOPIC)
        .option("startingOffsets", "earliest")
        .load()
        .selectExpr("CAST(key AS STRING) AS key", "value")
        .writeStream.foreachBatch(
            lambda batch, _: received.extend((row.key, bytes(row.value)) for row in batch.collect())
        )
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(180)
    assert query.exception() is None
    assert sorted(item for item in received if item[0].startswith(f"device-{run}-")) == sent
