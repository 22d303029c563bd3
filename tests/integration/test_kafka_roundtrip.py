"""kafka-python through the local broker, with messages above Kafka's default 1 MiB limit."""

from __future__ import annotations

import os

import pytest
from kafka import KafkaConsumer, KafkaProducer

from schemas.topics import MAX_MESSAGE_BYTES, UPDATES_TOPIC
from tests.conftest import RunningStack

pytestmark = pytest.mark.stack


def test_a_3_mib_update_crosses_fl_updates_intact(local_stack: RunningStack) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    producer = KafkaProducer(**local_stack.kafka.producer_options())
    metadata = producer.send(UPDATES_TOPIC, key=b"client-big", value=payload).get(timeout=60)
    producer.close()

    consumer = KafkaConsumer(**local_stack.kafka.consumer_options(), consumer_timeout_ms=30_000)
    from kafka import TopicPartition

    partition = TopicPartition(UPDATES_TOPIC, metadata.partition)
    consumer.assign([partition])
    consumer.seek(partition, metadata.offset)
    received = next(iter(consumer))
    consumer.close()
    assert received.key == b"client-big"
    assert received.value == payload


def test_a_message_above_the_limit_is_refused_by_the_producer(local_stack: RunningStack) -> None:
    from kafka.errors import MessageSizeTooLargeError

    producer = KafkaProducer(**local_stack.kafka.producer_options())
    with pytest.raises(MessageSizeTooLargeError):
        producer.send(UPDATES_TOPIC, value=b"x" * (MAX_MESSAGE_BYTES + 1)).get(timeout=30)
    producer.close()


def test_the_broker_stamps_fl_updates_and_an_older_topic_is_brought_in_line(local_stack: RunningStack) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    from devstack.topics import ensure_topics

    def timestamp_type(admin: KafkaAdminClient) -> str:
        resource = ConfigResource(ConfigResourceType.TOPIC, UPDATES_TOPIC, {"message.timestamp.type": None})
        described = admin.describe_configs([resource], config_filter="all")
        return str(described["topic"][UPDATES_TOPIC]["message.timestamp.type"]["value"])

    ensure_topics(local_stack.kafka)
    admin = KafkaAdminClient(**local_stack.kafka.admin_options())
    try:
        assert timestamp_type(admin) == "LogAppendTime"
        producer = KafkaProducer(**local_stack.kafka.producer_options())
        metadata = producer.send(UPDATES_TOPIC, key=b"client-clock", value=b"x", timestamp_ms=1_000).get(timeout=60)
        producer.close()
        assert metadata.timestamp > 1_000_000_000_000, "the broker's clock, not the client's"

        # a topic as an older fedstream made it: the client's timestamps
        old = ConfigResource(ConfigResourceType.TOPIC, UPDATES_TOPIC, {"message.timestamp.type": "CreateTime"})
        admin.alter_configs([old])
        assert timestamp_type(admin) == "CreateTime"
        ensure_topics(local_stack.kafka)
        assert timestamp_type(admin) == "LogAppendTime"
    finally:
        ensure_topics(local_stack.kafka)
        admin.close()


def test_topics_create_finds_the_topics_on_a_real_broker_with_fedstreams_settings(local_stack: RunningStack) -> None:
    from devstack.topics import ensure_topics
    from fedstream.cluster_topics import TopicsOutcome, ensure_cluster_topics
    from schemas.topics import MODELS_TOPIC

    ensure_topics(local_stack.kafka)
    outcome = ensure_cluster_topics(
        local_stack.kafka, replication_factor=1, partitions={UPDATES_TOPIC: 1, MODELS_TOPIC: 1}
    )
    assert outcome == TopicsOutcome(created=[], found={UPDATES_TOPIC: {}, MODELS_TOPIC: {}})
