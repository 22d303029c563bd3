"""kafka-python through the local broker, which keeps Kafka's stock message limits as a managed cluster does."""

from __future__ import annotations

import os

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from schemas.topics import KAFKA_DEFAULT_MESSAGE_MAX_BYTES, MODEL_HEADER, UPDATES_TOPIC
from tests.conftest import RunningStack

pytestmark = pytest.mark.stack

STOCK_PRODUCER_REQUEST_BYTES = 1_048_576
"""Apache Kafka's default producer ``max.request.size``."""


def test_the_largest_message_crosses_a_stock_broker_from_a_stock_producer(local_stack: RunningStack) -> None:
    payload = os.urandom(local_stack.kafka.max_message_bytes)
    key = b"k" * 256
    headers = [(MODEL_HEADER, b"m" * 64)]
    producer = KafkaProducer(
        **{**local_stack.kafka.producer_options(), "max_request_size": STOCK_PRODUCER_REQUEST_BYTES}
    )
    metadata = producer.send(UPDATES_TOPIC, key=key, value=payload, headers=headers).get(timeout=60)
    producer.close()

    consumer = KafkaConsumer(**local_stack.kafka.consumer_options(), consumer_timeout_ms=30_000)
    partition = TopicPartition(UPDATES_TOPIC, metadata.partition)
    consumer.assign([partition])
    consumer.seek(partition, metadata.offset)
    received = next(iter(consumer))
    consumer.close()
    assert received.key == key
    assert received.value == payload
    assert received.headers == headers


def test_a_message_above_the_stock_limit_is_refused(local_stack: RunningStack) -> None:
    from kafka.errors import MessageSizeTooLargeError

    too_large = b"x" * (KAFKA_DEFAULT_MESSAGE_MAX_BYTES + 1)
    producer = KafkaProducer(**local_stack.kafka.producer_options())
    with pytest.raises(MessageSizeTooLargeError):  # fedstream's producer refuses it before sending
        producer.send(UPDATES_TOPIC, value=too_large).get(timeout=30)
    producer.close()

    unchecked = KafkaProducer(**{**local_stack.kafka.producer_options(), "max_request_size": 4 * len(too_large)})
    with pytest.raises(MessageSizeTooLargeError):  # and the broker refuses it from a producer that does not
        unchecked.send(UPDATES_TOPIC, value=too_large).get(timeout=30)
    unchecked.close()


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
