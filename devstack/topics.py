"""Create fedstream's Kafka topics on a local broker, idempotently, with :func:`schemas.topics.topic_configs`.

A single-broker tool (replication factor 1); a managed cluster's topics are made once by its administrator
(``docs/databricks.md``).
"""

from __future__ import annotations

import logging
import time

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, TopicAlreadyExistsError

from schemas.kafka_settings import KafkaSettings
from schemas.topics import topic_configs

logger = logging.getLogger(__name__)


def ensure_topics(settings: KafkaSettings, partitions: int = 1, timeout_seconds: float = 60.0) -> list[str]:
    """Create the topics that are missing; return the names created now.

    Topics that exist already get the settings of :func:`topic_configs` where theirs differ (a topic made by
    an older fedstream, say, without broker-stamped timestamps on ``fl.updates``).
    """
    admin = _admin(settings, timeout_seconds)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name=name, num_partitions=partitions, replication_factor=1, topic_configs=config)
            for name, config in topic_configs(settings.max_message_bytes).items()
            if name not in existing
        ]
        created = []
        for topic in wanted:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        reconciled = _reconcile(admin, settings, sorted(existing & set(topic_configs(settings.max_message_bytes))))
        if reconciled:
            logger.info("topic settings brought in line: %s", reconciled)
        return created
    finally:
        admin.close()


def _reconcile(admin: KafkaAdminClient, settings: KafkaSettings, names: list[str]) -> dict[str, dict[str, str]]:
    """Set the wanted settings that differ on existing topics; return what changed, by topic."""
    if not names:
        return {}
    wanted = topic_configs(settings.max_message_bytes)
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(wanted[name])) for name in names]
    described = admin.describe_configs(resources, config_filter="all")["topic"]
    changes = {
        name: {key: value for key, value in wanted[name].items() if described[name][key]["value"] != value}
        for name in names
    }
    changes = {name: differing for name, differing in changes.items() if differing}
    if changes:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, dict(c)) for name, c in changes.items()])
    return changes


def _admin(settings: KafkaSettings, timeout_seconds: float) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            return KafkaAdminClient(**settings.admin_options())
        except (KafkaConnectionError, KafkaTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def reset_topics(settings: KafkaSettings, timeout_seconds: float = 60.0) -> None:
    """Delete and recreate fedstream's topics: a clean slate for a demo or a benchmark, never for production."""
    admin = _admin(settings, timeout_seconds)
    try:
        names = [name for name in topic_configs(settings.max_message_bytes) if name in set(admin.list_topics())]
        if names:
            admin.delete_topics(names)
        deadline = time.monotonic() + timeout_seconds
        while set(names) & set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {names} were not deleted within {timeout_seconds}s")
            time.sleep(0.5)
    finally:
        admin.close()
    deadline = time.monotonic() + timeout_seconds
    while True:
        ensure_topics(settings)
        if set(topic_configs(settings.max_message_bytes)) <= _existing(settings) and _leaders_ready(settings):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("topics could not be recreated")
        time.sleep(0.5)


def _existing(settings: KafkaSettings) -> set[str]:
    admin = _admin(settings, 30.0)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def _leaders_ready(settings: KafkaSettings) -> bool:
    """True once every partition of the recreated topics answers an offset request (it has a leader)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    consumer = KafkaConsumer(**settings.consumer_options())
    try:
        partitions = []
        for name in topic_configs(settings.max_message_bytes):
            ids = consumer.partitions_for_topic(name)
            if not ids:
                return False
            partitions += [TopicPartition(name, partition) for partition in ids]
        consumer.end_offsets(partitions)
        return True
    except KafkaError:
        return False
    finally:
        consumer.close()
