"""``fedstream topics create``: fedstream's topics on whatever cluster the FEDSTREAM_KAFKA_* variables name.

No broker: the admin client is replaced by a fake that records what it was asked.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from kafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError

import fedstream.cli as cli
import fedstream.cluster_topics as cluster_topics
from schemas.kafka_settings import ENVIRONMENT_VARIABLES, LOCAL_PORT_VARIABLE, KafkaSettings
from schemas.topics import (
    KAFKA_DEFAULT_MESSAGE_MAX_BYTES,
    MAX_MESSAGE_BYTES,
    MODELS_TOPIC,
    UPDATES_TOPIC,
    topic_configs,
    topic_message_bytes,
)

SECURED = {
    "FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS": "b-1.example.com:9096,b-2.example.com:9096",
    "FEDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "FEDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "FEDSTREAM_KAFKA_SASL_USERNAME": "fedstream-admin",
    "FEDSTREAM_KAFKA_SASL_PASSWORD": "s3cret",
    "FEDSTREAM_KAFKA_SSL_CAFILE": "/etc/kafka/ca.pem",
}


@pytest.fixture
def secured_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in [*ENVIRONMENT_VARIABLES, LOCAL_PORT_VARIABLE]:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in SECURED.items():
        monkeypatch.setenv(variable, value)


def test_topics_create_reaches_the_cluster_the_environment_names(
    secured_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []

    def fake(settings: KafkaSettings, **kwargs: Any) -> cluster_topics.TopicsOutcome:
        calls.append({"settings": settings, **kwargs})
        return cluster_topics.TopicsOutcome(
            created=[UPDATES_TOPIC], found={MODELS_TOPIC: {"segment.ms": "604800000 → 3600000"}}
        )

    monkeypatch.setattr(cluster_topics, "ensure_cluster_topics", fake)
    assert cli.main(["topics", "create", "--replication-factor", "2", "--max-message-bytes", "8388608"]) == 0
    (call,) = calls
    settings = call["settings"]
    assert settings.bootstrap_servers == SECURED["FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS"]
    assert settings.security_protocol == "SASL_SSL" and settings.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.sasl_username == "fedstream-admin" and settings.sasl_password is not None
    assert settings.sasl_password.get_secret_value() == "s3cret"
    assert settings.ssl_cafile == "/etc/kafka/ca.pem" and settings.max_message_bytes == 8 * 1024 * 1024
    assert call["replication_factor"] == 2 and call["partitions"] == {UPDATES_TOPIC: 3, MODELS_TOPIC: 1}
    out = capsys.readouterr().out
    assert "cluster b-1.example.com:9096,b-2.example.com:9096 (SASL_SSL)" in out
    assert "created fl.updates (3 partitions, replication factor 2)" in out
    assert "found   fl.models\n  segment.ms: 604800000 → 3600000 (left as is)" in out
    assert "s3cret" not in out


def test_ensure_is_an_alias_and_the_defaults_suit_a_managed_cluster(
    secured_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        cluster_topics,
        "ensure_cluster_topics",
        lambda settings, **kwargs: calls.append(kwargs) or cluster_topics.TopicsOutcome([], {}),
    )
    assert cli.main(["topics", "ensure", "--updates-partitions", "6"]) == 0
    assert calls == [{"replication_factor": 3, "partitions": {UPDATES_TOPIC: 6, MODELS_TOPIC: 1}}]


def test_unusable_settings_and_arguments_are_named(
    secured_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        cluster_topics, "ensure_cluster_topics", lambda *args, **kwargs: pytest.fail("must not connect")
    )
    monkeypatch.delenv("FEDSTREAM_KAFKA_SASL_USERNAME")
    assert cli.main(["topics", "create"]) == 2
    assert "needs sasl_username" in capsys.readouterr().err
    assert cli.main(["topics", "create", "--replication-factor", "0"]) == 2
    assert "--replication-factor must be ≥ 1, got 0" in capsys.readouterr().err


class FakeAdmin:
    """Stands in for ``kafka.admin.KafkaAdminClient``: one topic exists, creations are recorded."""

    instances: ClassVar[list[FakeAdmin]] = []
    existing: ClassVar[tuple[str, ...]] = (MODELS_TOPIC, "other")
    refuse: ClassVar[BaseException | None] = None
    message_bytes: ClassVar[str | None] = None
    """The found topics' ``max.message.bytes``; None: not described."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.created: list[Any] = []
        self.closed = False
        FakeAdmin.instances.append(self)

    def list_topics(self) -> list[str]:
        return list(self.existing)

    def create_topics(self, topics: list[Any]) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.created.extend(topics)

    def describe_configs(self, resources: list[Any], config_filter: str) -> dict[str, Any]:
        (resource,) = resources
        values = {key: {"value": value} for key, value in topic_configs()[resource.name].items()}
        values["segment.ms"] = {"value": "604800000"}
        if self.message_bytes is not None:
            values.setdefault("max.message.bytes", {"value": self.message_bytes})
        return {"topic": {resource.name: values}}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_admin(monkeypatch: pytest.MonkeyPatch) -> type[FakeAdmin]:
    monkeypatch.setattr("kafka.admin.KafkaAdminClient", FakeAdmin)
    monkeypatch.setattr(FakeAdmin, "instances", [])
    return FakeAdmin


def test_ensure_cluster_topics_creates_the_missing_and_reports_the_found(fake_admin: type[FakeAdmin]) -> None:
    settings = KafkaSettings.from_env(SECURED)
    outcome = cluster_topics.ensure_cluster_topics(
        settings, replication_factor=3, partitions={UPDATES_TOPIC: 4, MODELS_TOPIC: 1}
    )
    (admin,) = fake_admin.instances
    assert admin.options == settings.admin_options() and admin.options["sasl_plain_username"] == "fedstream-admin"
    (topic,) = admin.created
    assert (topic.name, topic.num_partitions, topic.replication_factor) == (UPDATES_TOPIC, 4, 3)
    assert topic.topic_configs == topic_configs(settings.max_message_bytes)[UPDATES_TOPIC]
    assert outcome == cluster_topics.TopicsOutcome(
        created=[UPDATES_TOPIC], found={MODELS_TOPIC: {"segment.ms": "604800000 → 3600000"}}
    )
    assert admin.closed


def test_a_topic_made_meanwhile_counts_as_found_and_a_refusal_is_reported(
    fake_admin: type[FakeAdmin], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(FakeAdmin, "refuse", TopicAlreadyExistsError())
    outcome = cluster_topics.ensure_cluster_topics(
        KafkaSettings(), replication_factor=1, partitions={UPDATES_TOPIC: 1, MODELS_TOPIC: 1}
    )
    assert outcome.created == [] and set(outcome.found) == {UPDATES_TOPIC, MODELS_TOPIC}
    monkeypatch.setattr(FakeAdmin, "refuse", TopicAuthorizationFailedError())
    for variable in [*ENVIRONMENT_VARIABLES, LOCAL_PORT_VARIABLE]:
        monkeypatch.delenv(variable, raising=False)
    assert cli.main(["topics", "create", "--replication-factor", "1"]) == 1
    assert "localhost:9092 (PLAINTEXT): TopicAuthorizationFailedError" in capsys.readouterr().err
    assert all(admin.closed for admin in fake_admin.instances)


def test_the_topics_keep_the_clusters_message_limit_unless_a_larger_one_is_configured() -> None:
    assert all("max.message.bytes" not in config for config in topic_configs().values())
    assert topic_message_bytes(MAX_MESSAGE_BYTES) <= KAFKA_DEFAULT_MESSAGE_MAX_BYTES
    raised = topic_configs(8 * 1024 * 1024)
    assert {config["max.message.bytes"] for config in raised.values()} == {str(topic_message_bytes(8 * 1024 * 1024))}
    assert raised[UPDATES_TOPIC]["message.timestamp.type"] == "LogAppendTime"
    assert raised[MODELS_TOPIC]["cleanup.policy"] == "compact"


@pytest.mark.parametrize(("theirs", "reported"), [("500000", True), (str(KAFKA_DEFAULT_MESSAGE_MAX_BYTES), False)])
def test_a_found_topic_too_small_for_the_largest_message_is_reported(
    fake_admin: type[FakeAdmin], monkeypatch: pytest.MonkeyPatch, theirs: str, reported: bool
) -> None:
    monkeypatch.setattr(FakeAdmin, "message_bytes", theirs)
    outcome = cluster_topics.ensure_cluster_topics(
        KafkaSettings(), replication_factor=1, partitions={UPDATES_TOPIC: 1, MODELS_TOPIC: 1}
    )
    needed = topic_message_bytes(KafkaSettings().max_message_bytes)
    expected = {"segment.ms": "604800000 → 3600000"}
    if reported:
        expected["max.message.bytes"] = f"{theirs} → {needed}"
    assert outcome.found == {MODELS_TOPIC: expected}
