"""fedstream's topics on a shared Kafka cluster (``fedstream topics create``): created when missing, never altered.

Unlike the dev stack's ``devstack.topics.ensure_topics`` (one broker, replication factor 1, settings altered in
place), this is for a cluster others run: existing topics are reported with the settings that differ from
fedstream's, and left as they are.
"""

from __future__ import annotations

import dataclasses

from schemas.kafka_settings import KafkaSettings


@dataclasses.dataclass(frozen=True)
class TopicsOutcome:
    """What ``fedstream topics create`` did: topics created now, and those found with their differing settings."""

    created: list[str]
    found: dict[str, dict[str, str]]
    """Topic → the fedstream settings it has otherwise (``key: "theirs → wanted"``); left as they are."""


def ensure_cluster_topics(
    settings: KafkaSettings, *, replication_factor: int, partitions: dict[str, int]
) -> TopicsOutcome:
    """Create fedstream's missing topics on the cluster ``settings`` reach, with ``schemas.topics.topic_configs``.

    The topics keep the cluster's ``max.message.bytes`` unless ``settings.max_message_bytes`` needs more; a
    found topic whose limit is too small for fedstream's largest message is reported. Raises
    ``KafkaUnreachableError``, naming the cause, when the cluster cannot be reached or refuses the login.
    """
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    from schemas.kafka_diagnosis import connect
    from schemas.topics import topic_configs, topic_message_bytes

    wanted = topic_configs(settings.max_message_bytes)
    needed_message_bytes = topic_message_bytes(settings.max_message_bytes)
    admin = connect(settings, lambda: KafkaAdminClient(**settings.admin_options()))
    try:
        existing = set(admin.list_topics())
        created = []
        for name, config in wanted.items():
            if name in existing:
                continue
            topic = NewTopic(name, partitions[name], replication_factor, topic_configs=config)
            try:
                admin.create_topics([topic])
                created.append(name)
            except TopicAlreadyExistsError:
                existing.add(name)
        found: dict[str, dict[str, str]] = {}
        for name in sorted(existing & set(wanted)):
            found[name] = {}
            keys = dict.fromkeys([*wanted[name], "max.message.bytes"])
            resource = ConfigResource(ConfigResourceType.TOPIC, name, keys)
            try:
                described = admin.describe_configs([resource], config_filter="all")["topic"][name]
            except (KafkaError, KeyError):  # a login without DescribeConfigs: report the topic as found
                continue
            for key, value in wanted[name].items():
                theirs = described.get(key, {}).get("value")
                if theirs is not None and theirs != value:
                    found[name][key] = f"{theirs} → {value}"
            # A topic that keeps its cluster's limit must still take fedstream's largest message.
            limit = str(described.get("max.message.bytes", {}).get("value"))
            if "max.message.bytes" not in wanted[name] and limit.isdigit() and int(limit) < needed_message_bytes:
                found[name]["max.message.bytes"] = f"{limit} → {needed_message_bytes}"
        return TopicsOutcome(created=created, found=found)
    finally:
        admin.close()
