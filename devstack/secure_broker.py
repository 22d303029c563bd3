"""The local KRaft broker with SASL/SCRAM-SHA-512 over TLS and least-privilege ACLs: a managed cluster, locally.

It is ``LocalKafkaBroker`` with one client listener, ``SASL_SSL``, instead of ``PLAINTEXT``. SCRAM credentials
are written into the metadata log when the storage is formatted (``StorageTool format --add-scram``), so the
broker starts with its users already enrolled; a broker that already has storage keeps the users it was
formatted with. A throwaway CA signs the broker's certificate. It keeps its state in ``<state>/kafka-secure`` so
it never touches the PLAINTEXT broker's.

Kafka's KRaft authorizer (``StandardAuthorizer``) decides every request. The broker's own login is the only
super user, on the client listener (SCRAM) and on the controller listener (SASL/PLAIN on ``localhost``, so an
anonymous connection there is nobody). Every other user gets the ACLs of its role, :data:`ROLE_GRANTS`, and
nothing else: a client writes ``fl.updates`` and reads ``fl.models``; the job reads ``fl.updates`` (with the
consumer groups Spark's Kafka source names) and writes ``fl.models``; an auditor, who reads Delta, gets nothing.
``up`` creates fedstream's topics and the ACLs with the broker's login.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourceType,
)
from pydantic import SecretStr

from devstack.certificates import BrokerCertificates, create_broker_certificates
from devstack.kafka_broker import BrokerError, BrokerStatus, LocalKafkaBroker
from schemas.kafka_settings import KafkaSettings, SaslMechanism, jaas_config
from schemas.paths import state_dir
from schemas.topics import MODELS_TOPIC, UPDATES_TOPIC

SCRAM_MECHANISM: SaslMechanism = "SCRAM-SHA-512"
BROKER_USER = "fedstream-broker"
"""The broker's own identity on its listeners (controller, transaction markers, ACL set-up): the super user."""
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"

Role = Literal["client", "job", "auditor"]


@dataclass(frozen=True)
class Grant:
    """One ALLOW ACL, from any host: ``operation`` on a topic or consumer group (Read and Write imply Describe).

    ``name`` is the resource's name, or with ``prefixed`` the start of every name the grant covers.
    """

    resource_type: Literal["topic", "group"]
    name: str
    operation: Literal["read", "write"]
    prefixed: bool = False


ROLE_GRANTS: Mapping[Role, tuple[Grant, ...]] = {
    "client": (Grant("topic", UPDATES_TOPIC, "write"), Grant("topic", MODELS_TOPIC, "read")),
    "job": (
        Grant("topic", UPDATES_TOPIC, "read"),
        Grant("topic", MODELS_TOPIC, "write"),
        # The streaming query's consumers: Spark names their groups spark-kafka-source-<uuid>-...; it commits no
        # offsets there (the checkpoint holds them). Batch reads (spark-kafka-relation-...) are not the job's.
        Grant("group", "spark-kafka-source-", "read", prefixed=True),
    ),
    "auditor": (),
}
"""What each role may do on the broker; a request the table does not allow is refused."""


@dataclass(frozen=True)
class KafkaLogin:
    """A SCRAM user of the secure broker: its password and the role whose ACLs it gets."""

    role: Role
    password: str = field(repr=False)


_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UNSAFE_PASSWORD_CHARACTERS = set(',[]"\\=')
"""Characters StorageTool's ``--add-scram`` syntax or a properties file would misread."""


class SecureKafkaBroker(LocalKafkaBroker):
    """A single-node KRaft broker whose only client listener is SASL_SSL with SCRAM-SHA-512, behind ACLs."""

    def __init__(self, users: Mapping[str, KafkaLogin], *, port: int, home: Path | None = None) -> None:
        """``users`` maps each enrolled username to its login; ``port`` and ``port + 1`` must be free."""
        for name, login in users.items():
            _check_user(name, login)
        if BROKER_USER in users:
            raise ValueError(f"username {BROKER_USER!r} is reserved for the broker itself")
        super().__init__(home=home, port=port)
        self.home = (home or state_dir()) / "kafka-secure"
        self.pid_file = self.home / "broker.pid"
        self.log_file = self.home / "broker.log"
        self.config_file = self.home / "server.properties"
        self.data_dir = self.home / "data"
        self.users = dict(users)
        self.certificates = BrokerCertificates(
            ca_file=self.home / "tls" / "ca.pem", keystore_file=self.home / "tls" / "broker-keystore.pem"
        )

    def client_settings(self, username: str, password: str) -> KafkaSettings:
        """Settings for a client of this broker: SCRAM-SHA-512 over TLS, trusting the broker's CA."""
        return KafkaSettings(
            bootstrap_servers=self.bootstrap_servers,
            security_protocol="SASL_SSL",
            sasl_mechanism=SCRAM_MECHANISM,
            sasl_username=username,
            sasl_password=SecretStr(password),
            ssl_cafile=str(self.certificates.ca_file),
        )

    def up(self, timeout_seconds: float = 90.0) -> BrokerStatus:
        """Create the CA and broker certificate on first use, start, then create the topics and every ACL."""
        if not (self.certificates.ca_file.exists() and self.certificates.keystore_file.exists()):
            self.certificates = create_broker_certificates(self.home / "tls")
        status = super().up(timeout_seconds)
        self._grant_access(timeout_seconds)
        return status

    def acls(self) -> list[ACL]:
        """Every ACL the broker holds for its users: :data:`ROLE_GRANTS` for each user's role."""
        return [
            _kafka_acl(f"User:{name}", grant) for name, login in self.users.items() for grant in ROLE_GRANTS[login.role]
        ]

    def _super_user_settings(self) -> KafkaSettings:
        return self.client_settings(BROKER_USER, self._broker_password())

    def _grant_access(self, timeout_seconds: float) -> None:
        """Create fedstream's topics and the users' ACLs (both idempotent), as the broker's own super user."""
        from devstack.topics import ensure_topics

        settings = self._super_user_settings()
        ensure_topics(settings, timeout_seconds=timeout_seconds)
        wanted = self.acls()
        if not wanted:
            return
        admin = KafkaAdminClient(**settings.admin_options())
        try:
            deadline = time.monotonic() + timeout_seconds
            while True:
                failed = admin.create_acls(wanted)["failed"]
                if not failed:
                    return
                if time.monotonic() > deadline:
                    raise BrokerError(f"the broker refused ACLs {wanted}: {failed}; see {self.log_file}")
                time.sleep(0.5)
        finally:
            admin.close()

    def _broker_password(self) -> str:
        """The broker's own SCRAM password, made once and kept with the storage it was formatted into."""
        path = self.home / "broker.secret"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def _write_config(self) -> None:
        super()._write_config()
        settings = dict(line.split("=", 1) for line in self.config_file.read_text().splitlines() if "=" in line)
        password = self._broker_password()
        broker_jaas = jaas_config(SCRAM_MECHANISM, BROKER_USER, password, shaded=False)
        # The controller listener: the broker (and controller) log in with PLAIN, the one user it knows.
        controller_jaas = jaas_config("PLAIN", BROKER_USER, password, shaded=False).removesuffix(";")
        controller_jaas += f' user_{BROKER_USER}="{password}";'
        settings.update(
            {
                "listeners": f"SASL_SSL://localhost:{self.port},CONTROLLER://localhost:{self.controller_port}",
                "advertised.listeners": f"SASL_SSL://localhost:{self.port}",
                "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
                "inter.broker.listener.name": "SASL_SSL",
                "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
                f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": broker_jaas,
                "sasl.mechanism.controller.protocol": "PLAIN",
                "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
                "listener.name.controller.plain.sasl.jaas.config": controller_jaas,
                "authorizer.class.name": AUTHORIZER,
                "super.users": f"User:{BROKER_USER}",
                "allow.everyone.if.no.acl.found": "false",
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(self.certificates.keystore_file),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(self.certificates.ca_file),
                "ssl.client.auth": "none",
                "ssl.endpoint.identification.algorithm": "https",
            }
        )
        self.config_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))

    def _format_storage(self, java: str, classpath: str) -> None:
        credentials = {BROKER_USER: self._broker_password(), **{name: u.password for name, u in self.users.items()}}
        scram_arguments = []
        for name, password in credentials.items():
            scram_arguments += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        self._run_storage_format(java, classpath, scram_arguments, secrets=list(credentials.values()))


def _kafka_acl(principal: str, grant: Grant) -> ACL:
    pattern = ResourcePattern(
        ResourceType.TOPIC if grant.resource_type == "topic" else ResourceType.GROUP,
        grant.name,
        ACLResourcePatternType.PREFIXED if grant.prefixed else ACLResourcePatternType.LITERAL,
    )
    operation = ACLOperation.READ if grant.operation == "read" else ACLOperation.WRITE
    return ACL(principal, "*", operation, ACLPermissionType.ALLOW, pattern)


def _check_user(name: str, login: KafkaLogin) -> None:
    if not isinstance(name, str) or not _USERNAME.fullmatch(name):
        raise ValueError(f"SCRAM username {name!r} ({type(name).__name__}) must match {_USERNAME.pattern}")
    if not isinstance(login, KafkaLogin):
        raise ValueError(f"user {name!r}: a KafkaLogin(role, password) is needed, got {type(login).__name__}")
    if login.role not in ROLE_GRANTS:
        raise ValueError(f"user {name!r}: role {login.role!r} is not one of {sorted(ROLE_GRANTS)}")
    password = login.password
    if not isinstance(password, str) or len(password) < 8:
        raise ValueError(f"the SCRAM password of {name!r} must be a string of at least 8 characters")
    if any(character in _UNSAFE_PASSWORD_CHARACTERS or ord(character) < 0x21 for character in password):
        raise ValueError(
            f"the SCRAM password of {name!r} contains one of {''.join(sorted(_UNSAFE_PASSWORD_CHARACTERS))}, "
            "a space or a control character"
        )
