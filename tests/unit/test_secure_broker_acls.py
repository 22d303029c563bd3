"""The secure broker's authorizer settings and least-privilege ACLs, without starting it (tests/integration does)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.admin import ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourceType

from devstack.secure_broker import (
    AUTHORIZER,
    BROKER_USER,
    ROLE_GRANTS,
    Grant,
    KafkaLogin,
    SecureKafkaBroker,
)

USERS = {
    "device-1": KafkaLogin("client", "client-password"),
    "fedstream-job": KafkaLogin("job", "job-password"),
    "auditor-1": KafkaLogin("auditor", "auditor-password"),
}


def test_each_role_gets_only_what_it_needs() -> None:
    grants = dict(ROLE_GRANTS)
    assert grants == {
        "client": (Grant("topic", "fl.updates", "write"), Grant("topic", "fl.models", "read")),
        "job": (
            Grant("topic", "fl.updates", "read"),
            Grant("topic", "fl.models", "write"),
            Grant("group", "spark-kafka-source-", "read", prefixed=True),
        ),
        "auditor": (),
    }


def test_the_broker_grants_each_user_its_roles_acls(tmp_path: Path) -> None:
    broker = SecureKafkaBroker(USERS, port=29092, home=tmp_path)
    acls = {
        (acl.principal, acl.resource_pattern.resource_type, acl.resource_pattern.resource_name, acl.operation)
        for acl in broker.acls()
    }
    assert acls == {
        ("User:device-1", ResourceType.TOPIC, "fl.updates", ACLOperation.WRITE),
        ("User:device-1", ResourceType.TOPIC, "fl.models", ACLOperation.READ),
        ("User:fedstream-job", ResourceType.TOPIC, "fl.updates", ACLOperation.READ),
        ("User:fedstream-job", ResourceType.TOPIC, "fl.models", ACLOperation.WRITE),
        ("User:fedstream-job", ResourceType.GROUP, "spark-kafka-source-", ACLOperation.READ),
    }
    assert all(acl.permission_type == ACLPermissionType.ALLOW and acl.host == "*" for acl in broker.acls())
    patterns = {acl.resource_pattern.resource_name: acl.resource_pattern.pattern_type for acl in broker.acls()}
    assert patterns["fl.models"] == ACLResourcePatternType.LITERAL
    assert patterns["spark-kafka-source-"] == ACLResourcePatternType.PREFIXED


def test_the_broker_runs_the_kraft_authorizer_with_itself_as_the_only_super_user(tmp_path: Path) -> None:
    broker = SecureKafkaBroker(USERS, port=29092, home=tmp_path)
    broker._write_config()
    config = dict(line.split("=", 1) for line in broker.config_file.read_text().splitlines())
    assert config["authorizer.class.name"] == AUTHORIZER
    assert config["super.users"] == f"User:{BROKER_USER}"
    assert config["allow.everyone.if.no.acl.found"] == "false"
    # No anonymous principal anywhere: the controller listener authenticates the broker too.
    assert config["listener.security.protocol.map"] == "CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL"
    assert config["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert f'user_{BROKER_USER}="' in config["listener.name.controller.plain.sasl.jaas.config"]


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ({"x-user": KafkaLogin("admin", "long-enough")}, "role 'admin' is not one of"),  # type: ignore[arg-type]
        ({"x-user": "a-bare-password"}, "a KafkaLogin(role, password) is needed, got str"),
        ({"x-user": KafkaLogin("client", "short")}, "at least 8 characters"),
        ({BROKER_USER: KafkaLogin("client", "long-enough")}, "reserved for the broker itself"),
    ],
)
def test_bad_users_are_refused(tmp_path: Path, users: dict[str, KafkaLogin], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SecureKafkaBroker(users, port=29092, home=tmp_path)


def test_a_logins_password_is_not_in_its_repr() -> None:
    assert "client-password" not in repr(USERS["device-1"])
