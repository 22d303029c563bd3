"""docker-compose.yml describes the same broker, topics and limits as `fedstream stack up`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from schemas.topics import (
    KAFKA_DEFAULT_MESSAGE_MAX_BYTES,
    MAX_MESSAGE_BYTES,
    MODELS_TOPIC,
    UPDATES_TOPIC,
    topic_configs,
    topic_message_bytes,
)

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _compose() -> dict:  # type: ignore[type-arg]
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_broker_keeps_kafkas_message_limits_which_fedstreams_messages_fit() -> None:
    environment = _compose()["services"]["kafka"]["environment"]
    raised = [name for name in environment if name.endswith("_MAX_BYTES")]
    assert not raised, f"docker-compose.yml raises Kafka's limits: {raised}"
    assert topic_message_bytes(MAX_MESSAGE_BYTES) <= KAFKA_DEFAULT_MESSAGE_MAX_BYTES
    assert environment["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_topics_are_created_with_the_settings_the_local_stack_uses() -> None:
    script = " ".join(_compose()["services"]["kafka-topics"]["command"])
    for topic, config in topic_configs().items():
        assert f"--topic {topic} " in script
        section = script.split(f"--topic {topic} ", 1)[1].split("--topic", 1)[0]
        for key, value in config.items():
            assert f"--config {key}={value}" in section, f"{topic}: {key}={value} missing from docker-compose.yml"
    assert {UPDATES_TOPIC, MODELS_TOPIC} == set(topic_configs())
    assert "max.message.bytes" not in script, "the topics keep the broker's message limit"


def test_mlflow_service_exposes_the_tracking_port() -> None:
    mlflow = _compose()["services"]["mlflow"]
    assert "5000:5000" in mlflow["ports"]
    assert "--backend-store-uri" in mlflow["command"]


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_parses_when_the_compose_plugin_exists() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed; the YAML checks above still ran")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
