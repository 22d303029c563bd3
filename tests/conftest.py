"""Session fixtures: the real local stack (broker, Spark with Delta, MLflow store), started by fedstream itself.

The test stack uses its own state folder and port, so a developer's running stack is left alone.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas.kafka_settings import KafkaSettings


def free_port_pair(preferred: int) -> int:
    """``preferred`` if it and the next port are free, else another such pair: broker and controller ports."""
    for port in [preferred, *range(preferred + 100, preferred + 2000, 7)]:
        if all(_port_free(candidate) for candidate in (port, port + 1)):
            return port
    raise RuntimeError(f"no two free consecutive ports near {preferred}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@dataclass(frozen=True)
class RunningStack:
    kafka: KafkaSettings
    home: Path


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    home = tmp_path_factory.mktemp("fedstream-home")
    port = free_port_pair(int(os.environ.get("FEDSTREAM_TEST_KAFKA_PORT", "19092")))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDSTREAM_HOME", str(home))
        patch.setenv("FEDSTREAM_KAFKA_PORT", str(port))
        patch.setenv("FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS", f"localhost:{port}")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        from devstack.local_stack import stack_down, stack_up

        status = stack_up()
        assert status.healthy, status.describe()
        try:
            yield RunningStack(kafka=KafkaSettings.from_env(), home=home)
        finally:
            stack_down()


@pytest.fixture(scope="session")
def spark(local_stack: RunningStack):  # type: ignore[no-untyped-def]
    from streaming_jobs.spark_session import get_spark

    session = get_spark("fedstream-tests")
    yield session
    session.stop()
