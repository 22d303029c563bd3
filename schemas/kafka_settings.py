"""How every fedstream party (client, job, CLI) reaches Kafka."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from schemas.topics import MAX_MESSAGE_BYTES, topic_message_bytes

DEFAULT_BOOTSTRAP_SERVERS = "localhost:9092"
LOCAL_PORT_VARIABLE = "FEDSTREAM_KAFKA_PORT"
"""The local stack's broker port (``devstack.kafka_broker``): the default bootstrap server's port too."""

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

KAFKA_CLASS_PACKAGE = "org.apache.kafka"
"""Package of the Kafka client classes in Apache Spark's Kafka connector."""
SHADED_KAFKA_CLASS_PACKAGE = "kafkashaded.org.apache.kafka"
"""The same classes as Databricks Runtime relocates them: JAAS strings there must name these."""
SPARK_SOURCE_FETCH_WAIT_MS = 10
"""How long the broker may hold a fetch of Spark's Kafka source that finds nothing new (Kafka's default: 500)."""

_LOGIN_MODULES: dict[str, str] = {
    "PLAIN": "common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "common.security.scram.ScramLoginModule",
}

ENVIRONMENT_VARIABLES: dict[str, str] = {
    "FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS": "bootstrap_servers",
    "FEDSTREAM_KAFKA_SECURITY_PROTOCOL": "security_protocol",
    "FEDSTREAM_KAFKA_SASL_MECHANISM": "sasl_mechanism",
    "FEDSTREAM_KAFKA_SASL_USERNAME": "sasl_username",
    "FEDSTREAM_KAFKA_SASL_PASSWORD": "sasl_password",
    "FEDSTREAM_KAFKA_SSL_CAFILE": "ssl_cafile",
    "FEDSTREAM_KAFKA_MAX_MESSAGE_BYTES": "max_message_bytes",
}
"""Environment variable → ``KafkaSettings`` field, as ``from_env`` reads them."""


def login_module(mechanism: SaslMechanism, *, shaded: bool) -> str:
    """Fully qualified JAAS login module class for ``mechanism``, shaded (Databricks) or not (Apache Spark)."""
    if mechanism not in _LOGIN_MODULES:
        raise ValueError(f"unsupported SASL mechanism {mechanism!r} ({type(mechanism).__name__})")
    package = SHADED_KAFKA_CLASS_PACKAGE if shaded else KAFKA_CLASS_PACKAGE
    return f"{package}.{_LOGIN_MODULES[mechanism]}"


def jaas_config(mechanism: SaslMechanism, username: str, password: str, *, shaded: bool) -> str:
    """The ``sasl.jaas.config`` value for a username/password mechanism, quotes and backslashes escaped."""
    return (
        f"{login_module(mechanism, shaded=shaded)} required "
        f'username="{_jaas_quoted(username, "username")}" password="{_jaas_quoted(password, "password")}";'
    )


def _jaas_quoted(value: str, name: str) -> str:
    if any(ord(character) < 0x20 for character in value):
        raise ValueError(f"SASL {name} contains a control character; JAAS configuration cannot carry it")
    return value.replace("\\", "\\\\").replace('"', '\\"')


class KafkaSettings(BaseModel):
    """Connection settings; ``from_env`` reads the ``FEDSTREAM_KAFKA_*`` variables.

    The defaults reach the local PLAINTEXT broker. A managed cluster (Confluent Cloud, MSK, Event Hubs) takes
    ``security_protocol="SASL_SSL"`` with a SASL mechanism and credentials; ``ssl_cafile`` only for a private CA.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(default=DEFAULT_BOOTSTRAP_SERVERS, min_length=1)
    max_message_bytes: int = Field(default=MAX_MESSAGE_BYTES, gt=0)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    """PEM file of the CA that signed the brokers' certificates; None trusts the system's CAs."""
    shaded_kafka_classes: bool = False
    """Name ``kafkashaded.org.apache.kafka`` classes in Spark's JAAS string (set on Databricks, never by hand)."""

    @model_validator(mode="after")
    def _consistent_security(self) -> KafkaSettings:
        problems = []
        sasl = {"sasl_mechanism": self.sasl_mechanism, "sasl_username": self.sasl_username}
        sasl["sasl_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.security_protocol.startswith("SASL_"):
            missing = [name for name, value in sasl.items() if not value]
            if missing:
                problems.append(f"security_protocol {self.security_protocol} needs {', '.join(missing)}")
        else:
            given = [name for name, value in sasl.items() if value is not None]
            if given:
                problems.append(f"{', '.join(given)} given but security_protocol is {self.security_protocol}")
        if self.ssl_cafile is not None and not self.uses_tls:
            problems.append(f"ssl_cafile given but security_protocol {self.security_protocol} does not use TLS")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> KafkaSettings:
        """Settings from the environment (``ENVIRONMENT_VARIABLES``), defaulting to the local broker.

        Without ``FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS`` that is ``localhost`` on ``FEDSTREAM_KAFKA_PORT``, the port
        ``fedstream stack up`` starts it on (9092 when unset), so one variable moves the stack and its users.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {
            field: environ[variable] for variable, field in ENVIRONMENT_VARIABLES.items() if variable in environ
        }
        local_port = environ.get(LOCAL_PORT_VARIABLE)
        values.setdefault("bootstrap_servers", f"localhost:{local_port}" if local_port else DEFAULT_BOOTSTRAP_SERVERS)
        return cls.model_validate({**values, **overrides})

    @property
    def uses_tls(self) -> bool:
        """True when connections are encrypted (``SSL`` or ``SASL_SSL``)."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    def _client_security_options(self) -> dict[str, Any]:
        """kafka-python keyword arguments for TLS and SASL; empty for the default PLAINTEXT."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.ssl_cafile is not None:
            options["ssl_cafile"] = self.ssl_cafile
        return options

    def producer_options(self) -> dict[str, Any]:
        """Keyword arguments for ``kafka.KafkaProducer``: idempotent, acknowledged by all replicas."""
        return {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "acks": "all",
            "enable_idempotence": True,
            # the record around a value of max_message_bytes: key, headers and framing (what the topics allow)
            "max_request_size": topic_message_bytes(self.max_message_bytes),
            "retries": 10,
            **self._client_security_options(),
        }

    def consumer_options(self) -> dict[str, Any]:
        """Keyword arguments for ``kafka.KafkaConsumer`` able to fetch the largest message."""
        return {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "max_partition_fetch_bytes": topic_message_bytes(self.max_message_bytes),
            "fetch_max_bytes": topic_message_bytes(self.max_message_bytes),
            **self._client_security_options(),
        }

    def admin_options(self) -> dict[str, Any]:
        """Keyword arguments for ``kafka.KafkaAdminClient``."""
        return {"bootstrap_servers": self.bootstrap_servers.split(","), **self._client_security_options()}

    def spark_source_options(self) -> dict[str, str]:
        """Options for Spark's Kafka source (``kafka.``-prefixed consumer settings)."""
        options = {
            "kafka.bootstrap.servers": self.bootstrap_servers,
            "kafka.max.partition.fetch.bytes": str(topic_message_bytes(self.max_message_bytes)),
            "kafka.fetch.max.bytes": str(topic_message_bytes(self.max_message_bytes)),
            # A task polls only for offsets the micro-batch already knows exist. The consumer sends its next
            # fetch before returning records, and the broker holds a fetch with nothing new for
            # fetch.max.wait.ms (500 by default): the next batch after a quiet spell waited that out first.
            "kafka.fetch.max.wait.ms": str(SPARK_SOURCE_FETCH_WAIT_MS),
        }
        if self.security_protocol != "PLAINTEXT":
            options["kafka.security.protocol"] = self.security_protocol
        if self.sasl_mechanism is not None and self.sasl_username is not None and self.sasl_password is not None:
            options["kafka.sasl.mechanism"] = self.sasl_mechanism
            options["kafka.sasl.jaas.config"] = jaas_config(
                self.sasl_mechanism,
                self.sasl_username,
                self.sasl_password.get_secret_value(),
                shaded=self.shaded_kafka_classes,
            )
        if self.ssl_cafile is not None:
            # Java clients read a PEM trust store directly (KIP-651), so the same file serves both clients.
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.location"] = self.ssl_cafile
        return options
