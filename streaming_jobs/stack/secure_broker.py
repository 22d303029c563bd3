"""The local KRaft broker with SASL/SCRAM-SHA-512 over TLS: how a managed cluster looks, on ``localhost``.

It is ``LocalKafkaBroker`` with one client listener, ``SASL_SSL``, instead of ``PLAINTEXT``; the controller
listener stays PLAINTEXT on ``localhost``. SCRAM credentials are written into the metadata log when the storage
is formatted (``StorageTool format --add-scram``), so the broker starts with its users already enrolled; a broker
that already has storage keeps the users it was formatted with. A throwaway CA signs the broker's certificate.
It keeps its state in ``<state>/kafka-secure`` so it never touches the PLAINTEXT broker's.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from schemas.kafka_settings import KafkaSettings, SaslMechanism, jaas_config
from streaming_jobs.stack.certificates import BrokerCertificates, create_broker_certificates
from streaming_jobs.stack.kafka_broker import BrokerStatus, LocalKafkaBroker
from streaming_jobs.stack.paths import state_dir

SCRAM_MECHANISM: SaslMechanism = "SCRAM-SHA-512"
BROKER_USER = "fedstream-broker"
"""The broker's own identity on its listener (transaction markers and other broker-to-broker requests)."""

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UNSAFE_PASSWORD_CHARACTERS = set(',[]"\\=')
"""Characters StorageTool's ``--add-scram`` syntax or a properties file would misread."""


class SecureKafkaBroker(LocalKafkaBroker):
    """A single-node KRaft broker whose only client listener is SASL_SSL with SCRAM-SHA-512."""

    def __init__(self, users: Mapping[str, str], *, port: int, home: Path | None = None) -> None:
        """``users`` maps each enrolled username to its password; ``port`` and ``port + 1`` must be free."""
        for name, password in users.items():
            _check_user(name, password)
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
        """Create the CA and broker certificate on first use, then start as ``LocalKafkaBroker.up`` does."""
        if not (self.certificates.ca_file.exists() and self.certificates.keystore_file.exists()):
            self.certificates = create_broker_certificates(self.home / "tls")
        return super().up(timeout_seconds)

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
        broker_jaas = jaas_config(SCRAM_MECHANISM, BROKER_USER, self._broker_password(), shaded=False)
        settings.update(
            {
                "listeners": f"SASL_SSL://localhost:{self.port},CONTROLLER://localhost:{self.controller_port}",
                "advertised.listeners": f"SASL_SSL://localhost:{self.port}",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
                "inter.broker.listener.name": "SASL_SSL",
                "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
                f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": broker_jaas,
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
        credentials = {BROKER_USER: self._broker_password(), **self.users}
        scram_arguments = []
        for name, password in credentials.items():
            scram_arguments += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        self._run_storage_format(java, classpath, scram_arguments, secrets=list(credentials.values()))


def _check_user(name: str, password: str) -> None:
    if not isinstance(name, str) or not _USERNAME.fullmatch(name):
        raise ValueError(f"SCRAM username {name!r} ({type(name).__name__}) must match {_USERNAME.pattern}")
    if not isinstance(password, str) or len(password) < 8:
        raise ValueError(f"the SCRAM password of {name!r} must be a string of at least 8 characters")
    if any(character in _UNSAFE_PASSWORD_CHARACTERS or ord(character) < 0x21 for character in password):
        raise ValueError(
            f"the SCRAM password of {name!r} contains one of {''.join(sorted(_UNSAFE_PASSWORD_CHARACTERS))}, "
            "a space or a control character"
        )
