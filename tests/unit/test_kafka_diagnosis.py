"""The connection probe's parts that need no broker: bootstrap parsing, unusable CA files, unreachable ports.

The probe against a real broker (TLS, SASL, wrong CA, wrong password) is in tests/integration/test_secure_kafka.py.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError
from pydantic import SecretStr

import fedstream.cli as cli
from schemas.kafka_diagnosis import (
    KafkaUnreachableError,
    bootstrap_addresses,
    explain_connection_failure,
    unreachable_error,
)
from schemas.kafka_settings import ENVIRONMENT_VARIABLES, LOCAL_PORT_VARIABLE, KafkaSettings

PASSWORD = "s3cret-password"


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unused:
        unused.bind(("localhost", 0))
        return int(unused.getsockname()[1])


def _sasl(bootstrap_servers: str, **overrides: Any) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="device-7",
        sasl_password=SecretStr(PASSWORD),
    ).model_copy(update=overrides)


@pytest.mark.parametrize(
    ("servers", "addresses"),
    [
        ("localhost:9092", [("localhost", 9092)]),
        ("b-1.example.com:9096, b-2.example.com:9096", [("b-1.example.com", 9096), ("b-2.example.com", 9096)]),
        ("broker", [("broker", 9092)]),
        ("[::1]:19092,[fe80::1]", [("::1", 19092), ("fe80::1", 9092)]),
    ],
)
def test_bootstrap_servers_are_parsed_as_kafka_python_reads_them(
    servers: str, addresses: list[tuple[str, int]]
) -> None:
    assert bootstrap_addresses(servers) == addresses


@pytest.mark.parametrize(
    ("servers", "problem"), [("broker:http", "'broker:http' has no valid port"), (" , ", "names no")]
)
def test_unusable_bootstrap_servers_are_named(servers: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        bootstrap_addresses(servers)
    assert problem in explain_connection_failure(KafkaSettings(bootstrap_servers=servers))


def test_nothing_listening_is_named_with_every_server_tried() -> None:
    first, second = _closed_port(), _closed_port()
    explanation = explain_connection_failure(KafkaSettings(bootstrap_servers=f"localhost:{first},127.0.0.1:{second}"))
    assert (
        explanation == f"cannot reach localhost:{first} (connection refused), 127.0.0.1:{second} (connection refused)"
    )


def test_an_unreadable_ca_file_is_named(tmp_path: Path) -> None:
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("not a certificate\n")
    for ca_file in (tmp_path / "missing.pem", not_a_certificate):
        settings = KafkaSettings(bootstrap_servers="localhost:9093", security_protocol="SSL", ssl_cafile=str(ca_file))
        assert explain_connection_failure(settings).startswith(f"cannot use ssl_cafile '{ca_file}' as a CA file: ")


def test_the_error_names_the_settings_but_not_the_password() -> None:
    port = _closed_port()
    error = unreachable_error(_sasl(f"localhost:{port}"), KafkaTimeoutError("Unable to bootstrap"))
    assert isinstance(error, KafkaUnreachableError) and isinstance(error, RuntimeError)
    assert str(error) == (
        f"cannot connect to Kafka (bootstrap_servers localhost:{port}, security_protocol SASL_PLAINTEXT, "
        f"sasl_mechanism SCRAM-SHA-512, sasl_username 'device-7'): cannot reach localhost:{port} (connection refused)"
    )


def test_a_password_in_any_part_of_the_message_is_masked() -> None:
    settings = _sasl(f"localhost:{_closed_port()}", sasl_username=f"user-{PASSWORD}")
    message = str(unreachable_error(settings, KafkaTimeoutError("Unable to bootstrap")))
    assert PASSWORD not in message and "user-********" in message


def test_topics_create_prints_the_cause(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """kafka-python's admin client gives up bootstrapping (as it does after 30 s); the command names why."""

    def gives_up(**options: Any) -> None:
        raise KafkaTimeoutError(f"Unable to bootstrap from {options['bootstrap_servers']}")

    port = _closed_port()
    for variable in [*ENVIRONMENT_VARIABLES, LOCAL_PORT_VARIABLE]:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS", f"localhost:{port}")
    monkeypatch.setattr("kafka.admin.KafkaAdminClient", gives_up)
    assert cli.main(["topics", "create"]) == 1
    assert capsys.readouterr().err == (
        f"fedstream topics: cannot connect to Kafka (bootstrap_servers localhost:{port}, security_protocol PLAINTEXT): "
        f"cannot reach localhost:{port} (connection refused)\n"
    )
