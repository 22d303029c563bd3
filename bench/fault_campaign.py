"""Fault campaign: kill the streaming job and restart the broker while clients publish; nothing may be lost.

Each round injects one fault of every kind: a SIGKILL at each crash point of :mod:`streaming_jobs.faults`
(on a random pass of it), a SIGKILL at a random moment while it works, and a broker stop/start under a
running job. After every kill the job is started again from its checkpoint. Afterwards Delta and Kafka are
read back: every acknowledged update exactly once in ``updates`` and in one version, consecutive versions
that recompute, clients on the newest. ``bench.faults`` prints the report; the integration test runs one
round and asserts on it.
"""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kafka.errors import KafkaError

from devstack.kafka_broker import LocalKafkaBroker
from fedstream.job_process import JobOptions, JobProcess
from producers.identity import ClientIdentity
from producers.transport import GlobalModelSubscriber, UpdatePublisher
from producers.updates import build_update
from schemas.kafka_settings import KafkaSettings
from schemas.tensors import encode_tensors
from streaming_jobs.faults import CRASH_POINTS, FAULT_VARIABLE

PARAMETERS = {"w": np.zeros((16, 8), dtype=np.float32), "b": np.zeros(8, dtype=np.float32)}
AGGREGATION: dict[str, Any] = {"buffer_size": 4, "max_wait_seconds": 2.0, "max_staleness": None}
RANDOM_KILL = "random moment"
BROKER_RESTART = "broker restart"
FAULT_KINDS = (*CRASH_POINTS, RANDOM_KILL, BROKER_RESTART)


@dataclass(frozen=True)
class CampaignSettings:
    """How many rounds of faults, and how the fleet publishes meanwhile."""

    rounds: int = 1
    clients: int = 3
    seconds_between_updates: float = 1.0
    broker_down_seconds: float = 5.0
    seed: int = 11


@dataclass(frozen=True)
class InjectedFault:
    """One fault and whether it happened as planned.

    Planned means: the job was killed at that point, or, for a broker restart, the running job made a new
    version afterwards without being restarted.
    """

    kind: str
    fired: bool
    detail: str = ""


@dataclass
class CampaignReport:
    """What the campaign did, and what Delta and Kafka hold afterwards."""

    faults: list[InjectedFault] = field(default_factory=list)
    job_starts: int = 0
    unplanned_exits: int = 0
    acknowledged: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    placed: list[str] = field(default_factory=list)
    recomputed_ok: int = 0
    newest_on_kafka: int | None = None
    newest_hash_matches: bool = False
    seconds: float = 0.0

    @property
    def missing(self) -> set[str]:
        """Acknowledged by the broker but absent from ``updates``."""
        return set(self.acknowledged) - set(self.accepted)

    @property
    def duplicated(self) -> int:
        """Rows in ``updates`` beyond the first for an update id."""
        return sum(count - 1 for count in Counter(self.accepted).values())

    @property
    def unexpected(self) -> set[str]:
        """In ``updates`` but never acknowledged to a client."""
        return set(self.accepted) - set(self.acknowledged)

    @property
    def versions_consecutive(self) -> bool:
        """Versions 0..n with no gap and no duplicate."""
        return self.versions == list(range(len(self.versions)))

    @property
    def placed_exactly_once(self) -> bool:
        """Every acknowledged update in exactly one model version."""
        return sorted(self.placed) == sorted(self.acknowledged)

    @property
    def clean(self) -> bool:
        """No loss, no duplicate, no gap, every version recomputes, clients on the newest version."""
        return (
            not self.missing
            and not self.duplicated
            and not self.unexpected
            and self.versions_consecutive
            and self.placed_exactly_once
            and self.recomputed_ok == len(self.versions) - 1
            and self.newest_on_kafka == (self.versions[-1] if self.versions else None)
            and self.newest_hash_matches
            and all(fault.fired for fault in self.faults)
        )


class SigningFleet(threading.Thread):
    """Signed clients publishing small updates from the newest version they see, until told to stop.

    Each update is retried (same id) until the broker acknowledges it.
    """

    def __init__(self, kafka: KafkaSettings, model_name: str, identities: list[ClientIdentity], pause: float) -> None:
        super().__init__(daemon=True)
        self.kafka, self.model_name, self.identities, self.pause = kafka, model_name, identities, pause
        self.acknowledged: list[str] = []
        self.failure: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        """Publish until ``stopping`` is set; a failure is kept in ``failure``."""
        try:
            publisher = UpdatePublisher(self.kafka)
            subscriber = GlobalModelSubscriber(self.kafka, self.model_name)
            rng = np.random.default_rng(5)
            index = 0
            while not self.stopping.is_set():
                identity = self.identities[index % len(self.identities)]
                base = subscriber.poll(0.1) or 0
                delta = {name: (0.01 * rng.normal(size=a.shape)).astype(np.float32) for name, a in PARAMETERS.items()}
                header, value = build_update(
                    client_id=identity.client_id, model_name=self.model_name, base_version=base,
                    sample_count=10, delta=delta, signer=identity.sign,
                )  # fmt: skip
                self._publish_until_acknowledged(publisher, identity.client_id, value)
                self.acknowledged.append(header.update_id)
                index += 1
                self.stopping.wait(self.pause)
            publisher.close()
            subscriber.close()
        except BaseException as error:  # reported to the campaign
            self.failure = error

    @staticmethod
    def _publish_until_acknowledged(publisher: UpdatePublisher, client_id: str, value: bytes) -> None:
        deadline = time.monotonic() + 180
        while True:
            try:
                publisher.publish(client_id, value)
                return
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)  # the broker is restarting; the same update (same id) is sent again


class FaultCampaign:
    """Runs rounds of faults against a job over ``folder`` on the broker of ``kafka``; see the module doc."""

    def __init__(
        self,
        folder: Path,
        kafka: KafkaSettings,
        settings: CampaignSettings,
        say: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.folder, self.kafka, self.settings, self.say = folder, kafka, settings, say
        self.random = random.Random(settings.seed)
        self.model_name = f"faults-{uuid.uuid4().hex[:8]}"
        self.identities = [ClientIdentity.generate(f"device-{index}") for index in range(settings.clients)]
        self.job = JobProcess(folder, self._job_options())
        self.report = CampaignReport()

    def schedule(self) -> list[str]:
        """The faults in the order they are injected: every kind once per round."""
        return [kind for _ in range(self.settings.rounds) for kind in FAULT_KINDS]

    def run(self, spark: Any) -> CampaignReport:
        """Inject every fault, let the job catch up, then read back what Delta and Kafka hold."""
        started = time.monotonic()
        schedule = self.schedule()
        fleet = SigningFleet(self.kafka, self.model_name, self.identities, self.settings.seconds_between_updates)
        try:
            self._start_for(schedule[0])
            self.job.wait_for_version(self.kafka, 0)
            fleet.start()
            for index, kind in enumerate(schedule):
                if index:
                    self._start_for(kind)
                self.say(f"fault {index + 1}/{len(schedule)}: {kind}")
                fault = self._inject(kind)
                self.report.faults.append(fault)
                if not fault.fired:
                    self.say(f"  did not happen as planned: {fault.detail}")
            fleet.stopping.set()
            fleet.join(300)
            if fleet.is_alive() or fleet.failure is not None:
                raise RuntimeError(f"the fleet failed: {fleet.failure!r}")
            self.report.acknowledged = list(fleet.acknowledged)
            self.say(f"fleet stopped after {len(fleet.acknowledged)} acknowledged updates; waiting for the job")
            self._wait_until_aggregated(spark, len(fleet.acknowledged))
        finally:
            fleet.stopping.set()
            self.job.stop()
        self.say("the job caught up; reading Delta and Kafka back")
        self._read_back(spark)
        self.report.job_starts = self.job.starts
        self.report.seconds = time.monotonic() - started
        return self.report

    def _job_options(self) -> JobOptions:
        initial = self.folder / "initial.safetensors"
        initial.write_bytes(encode_tensors(PARAMETERS))
        keys = self.folder / "keys"
        keys.mkdir(exist_ok=True)
        for identity in self.identities:
            (keys / f"{identity.client_id}.pub").write_text(identity.public_key.hex())
        return JobOptions(
            self.model_name,
            initial,
            AGGREGATION,
            keys,
            experiment=f"fedstream-{self.model_name}",
            register_every=2,
            trigger_seconds=0.5,
            registry_refresh_seconds=2.0,
        )

    def _start_for(self, kind: str) -> None:
        """(Re)start the job; armed with the crash point when ``kind`` is one, on a random pass of it."""
        self.job.stop()  # graceful; only left running after a broker restart
        if kind in CRASH_POINTS:
            self.job.start({FAULT_VARIABLE: f"{kind}@{self.random.randint(1, 3)}"})
        else:
            self.job.start()

    def _inject(self, kind: str) -> InjectedFault:
        if kind in CRASH_POINTS:
            code = self.job.wait_for_exit(240)
            return InjectedFault(kind, code == -signal.SIGKILL, f"exit code {code}")
        self._wait_for_next_version()
        if kind == RANDOM_KILL:
            time.sleep(self.random.uniform(0.5, 6.0))
            alive = self.job.running()
            self.job.kill()
            return InjectedFault(kind, alive, "" if alive else "the job had exited before the kill")
        broker = LocalKafkaBroker()
        broker.down()
        time.sleep(self.settings.broker_down_seconds)
        broker.up()
        try:
            self._wait_for_next_version()
        except (RuntimeError, TimeoutError) as error:
            self.report.unplanned_exits += 1
            return InjectedFault(kind, False, f"the job did not carry on after the broker came back: {error}")
        return InjectedFault(kind, True)

    def _wait_for_next_version(self) -> None:
        subscriber = GlobalModelSubscriber(self.kafka, self.model_name)
        try:
            current = subscriber.poll(1.0) or 0
        finally:
            subscriber.close()
        self.job.wait_for_version(self.kafka, current + 1)

    def _wait_until_aggregated(self, spark: Any, expected: int, timeout_seconds: float = 240) -> None:
        if not self.job.running():
            self.job.start()
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline and self._aggregated(spark) < expected:
            if self.job.wait_for_exit(2) is not None:
                self.report.unplanned_exits += 1
                self.job.start()
        time.sleep(2)  # room for a wrong extra version to appear, were a restart to duplicate work

    def _aggregated(self, spark: Any) -> int:
        from pyspark.sql import functions as F  # noqa: N812

        from streaming_jobs.tables import MODEL_VERSIONS, TableLocations

        rows = (
            TableLocations(str(self.job.tables))
            .read(spark, MODEL_VERSIONS)
            .where(F.col("model_name") == self.model_name)
            .select(F.size("update_ids").alias("count"))
            .collect()
        )
        return sum(row["count"] for row in rows)

    def _read_back(self, spark: Any) -> None:
        from pyspark.sql import functions as F  # noqa: N812

        from streaming_jobs.audit import verify_rows
        from streaming_jobs.tables import MODEL_VERSIONS, UPDATES, TableLocations

        locations = TableLocations(str(self.job.tables))
        mine = F.col("model_name") == self.model_name
        report = self.report
        report.accepted = [row.update_id for row in locations.read(spark, UPDATES).where(mine).collect()]
        versions = sorted(locations.read(spark, MODEL_VERSIONS).where(mine).collect(), key=lambda row: row.version)
        report.versions = [row.version for row in versions]
        report.placed = [update_id for row in versions for update_id in row.update_ids]
        by_version = {row.version: row for row in versions}  # read once: each check needs only its parent's row
        report.recomputed_ok = sum(
            row.version - 1 in by_version and verify_rows(spark, locations, row, by_version[row.version - 1]).ok
            for row in versions[1:]
        )
        subscriber = GlobalModelSubscriber(self.kafka, self.model_name)
        try:
            newest = subscriber.newest()
        finally:
            subscriber.close()
        report.newest_on_kafka = newest.header.version
        report.newest_hash_matches = bool(versions) and newest.header.parameter_hash == versions[-1].parameter_hash
