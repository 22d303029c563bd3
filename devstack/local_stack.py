"""The whole local stack as one thing: jars, broker, topics, the job's signing key; MLflow is a SQLite file.

The job's key pair lives in ``<state>/keys``: a local job signs global versions with ``fedstream-job.key`` and
local clients trust what ``fedstream-job.pub`` verifies, so both work without configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from devstack.kafka_broker import BrokerStatus, LocalKafkaBroker
from schemas.kafka_settings import KafkaSettings
from schemas.paths import state_dir
from streaming_jobs.tracking import tracking_uri


@dataclass(frozen=True)
class StackStatus:
    """The local stack's state, as people read it."""

    broker: BrokerStatus
    mlflow_uri: str
    state: str

    @property
    def healthy(self) -> bool:
        """True when the broker runs and answers."""
        return self.broker.running and self.broker.answering

    def describe(self) -> str:
        """Several lines for people."""
        return "\n".join([self.broker.describe(), f"mlflow: {self.mlflow_uri}", f"state: {self.state}"])


def stack_up() -> StackStatus:
    """Resolve jars, make the job's key pair, start the broker and create the topics; harmless when already up."""
    from devstack.topics import ensure_topics
    from streaming_jobs.signing_key import local_job_key
    from streaming_jobs.spark_session import connector_jars

    connector_jars()  # resolved now so that the job and the tests start offline
    local_job_key()  # before any client looks for the job's public key
    broker = LocalKafkaBroker()
    broker.up()
    created = ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap_servers))
    if created:
        print(f"fedstream: created topics {', '.join(created)}", flush=True)
    return stack_status()


def stack_down() -> StackStatus:
    """Stop the broker; the state folder (topics, tables, runs) stays for the next ``up``."""
    LocalKafkaBroker().down()
    return stack_status()


def stack_status() -> StackStatus:
    """What runs now."""
    return StackStatus(broker=LocalKafkaBroker().status(), mlflow_uri=tracking_uri(), state=str(state_dir()))
