"""The README's client example runs as written, so it cannot rot silently.

The first block (model, data, identity, training, ``FederatedClient``) runs in a folder holding the files it
reads; the second (Kafka) runs with fake transports in place of the real ones, for one cycle.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import producers.transport
from producers.client import FederatedClient
from producers.identity import ClientIdentity
from producers.models import model_weights
from schemas.kafka_settings import ENVIRONMENT_VARIABLES, LOCAL_PORT_VARIABLE, KafkaSettings
from schemas.messages import ModelHeader
from schemas.wire import DecodedModel, DecodedUpdate, decode_update

README = Path(__file__).resolve().parents[2] / "README.md"


def _example_blocks() -> tuple[str, str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    (construction,) = [block for block in blocks if "FederatedClient(" in block]
    (connection,) = [block for block in blocks if "client.run_once(" in block]
    return construction, connection


def _global_version(parameters: dict[str, np.ndarray], version: int) -> DecodedModel:
    header = ModelHeader(
        model_name="heart-rate",
        version=version,
        parent_version=version - 1,
        parent_parameter_hash="ab" * 32,
        parameter_hash="cd" * 32,
        payload_sha256="ef" * 32,
        created_at=datetime.now(UTC),
    )
    return DecodedModel(header=header, parameters=parameters)


@pytest.fixture
def device_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClientIdentity:
    generator = np.random.default_rng(0)
    features = generator.normal(size=(600, 8))
    np.save(tmp_path / "features.npy", features)
    np.save(tmp_path / "heart_rate.npy", 70 + features @ generator.normal(size=8))
    identity = ClientIdentity.pseudonymous()
    identity.save(tmp_path / "keys")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)  # the example's model starts from torch's global random state
    return identity


def test_the_construction_block_builds_a_client_that_trains_a_regression(device_folder: ClientIdentity) -> None:
    construction, _ = _example_blocks()
    namespace: dict[str, Any] = {}
    exec(compile(construction, str(README), "exec"), namespace)
    client = namespace["client"]
    assert isinstance(client, FederatedClient) and client.client_id == device_folder.client_id
    base = model_weights(client.model)
    prepared = client.prepare_update(_global_version(base, 5))
    decoded = decode_update(prepared.value)
    assert isinstance(decoded, DecodedUpdate) and decoded.header.client_id == device_folder.client_id
    assert decoded.header.sample_count == 400 and decoded.header.base_version == 5
    assert decoded.signature == device_folder.sign(decoded.signed_bytes)
    assert any(np.any(delta != 0) for delta in decoded.delta.values())
    metrics = decoded.header.metrics
    assert metrics.validation_accuracy is None and metrics.validation_count == 200
    assert metrics.validation_loss is not None and metrics.training_steps > 0


class _StopError(Exception):
    pass


def test_the_connection_block_runs_one_cycle_with_fake_transports(
    device_folder: ClientIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in [*ENVIRONMENT_VARIABLES, LOCAL_PORT_VARIABLE]:
        monkeypatch.delenv(variable, raising=False)
    construction, connection = _example_blocks()
    namespace: dict[str, Any] = {}
    exec(compile(construction, str(README), "exec"), namespace)
    published: list[tuple[str, bytes, str]] = []
    version = _global_version(model_weights(namespace["client"].model), 2)

    class Subscriber:
        def __init__(self, settings: KafkaSettings, model_name: str) -> None:
            assert settings == KafkaSettings() and model_name == "heart-rate"

        def newest(self) -> DecodedModel:
            return version

        def wait_for_version_after(self, base_version: int, timeout_seconds: float) -> int | None:
            assert base_version == 2
            raise _StopError

    class Publisher:
        def __init__(self, settings: KafkaSettings) -> None:
            pass

        def publish(self, client_id: str, value: bytes, *, model_name: str) -> None:
            published.append((client_id, value, model_name))

    monkeypatch.setattr(producers.transport, "GlobalModelSubscriber", Subscriber)
    monkeypatch.setattr(producers.transport, "UpdatePublisher", Publisher)
    with pytest.raises(_StopError):
        exec(compile(connection, str(README), "exec"), namespace)
    ((client_id, value, model_name),) = published
    assert client_id == device_folder.client_id and model_name == "heart-rate"
    assert isinstance(decode_update(value), DecodedUpdate)
