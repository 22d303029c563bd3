"""The floor the streaming job is measured against: the same work without Spark and without Delta.

A kafka-python consumer reads ``fl.updates``; each message is decoded (``decode_update``) and judged by the
job's own intake step (``aggregator.intake.Intake``: signature, duplicate, content and staleness checks)
against the same server the job runs (``aggregator.AsyncServer``), which makes a version whenever its buffer
policy says so; each new version is published on ``fl.models`` (acknowledged) framed as the job frames it.
Nothing is persisted: this is the cost of the decode, validate, aggregate and publish work alone. It writes
a status file shaped like the job's (``current_version``, totals, ``recent_batches``), so the
benchmark follows both the same way.

Run as ``python -m bench.bare_loop --initial-model FILE --status-file FILE``; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from aggregator import AggregationConfig, AsyncServer, NewVersion
from aggregator.intake import Intake, IntakeMessage
from bench.workload import model_value
from schemas.kafka_settings import KafkaSettings
from schemas.rejections import Rejection, RejectionReason
from schemas.tensors import Tensors, decode_tensors, parameter_hash
from schemas.topics import MODELS_TOPIC, UPDATES_TOPIC
from schemas.wire import DecodedUpdate, decode_update
from streaming_jobs.intake_limits import DEFAULT_BATCH_BYTES_BUDGET

FETCH_BYTES = DEFAULT_BATCH_BYTES_BUDGET
"""Most bytes one poll fetches: the job's default batch byte budget."""


class BareLoop:
    """Consume, decode, judge (the job's intake step), aggregate (the job's server) and publish, one poll at a time."""

    def __init__(
        self,
        kafka: KafkaSettings,
        model_name: str,
        parameters: Tensors,
        config: AggregationConfig,
        *,
        status_file: Path,
        max_records: int,
        public_keys: dict[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self.kafka = kafka
        self.model_name = model_name
        self.config = config
        self.status_file = status_file
        self.max_records = max_records
        self.public_keys = public_keys
        self.server = AsyncServer(config.with_secret_dp_seed(), parameters)
        self.intake = Intake(
            self.server,
            model_name,
            authenticate=None if public_keys is None else lambda decoded: _authenticity_problem(decoded, public_keys),
        )
        self.parameter_hash = parameter_hash(parameters)
        self.totals = {"batches": 0, "messages": 0, "accepted": 0, "rejected": 0, "versions": 0}
        self.rejected_by_reason: dict[str, int] = {}
        self.recent_batches: deque[dict[str, object]] = deque(maxlen=100)
        # CRCs are checked as the job's consumer checks them (kafka-python uses the crc32c package); fetches are
        # as large as the job's batch budget, so a poll can hold ``max_records`` updates as a micro-batch does.
        options = {**kafka.consumer_options(), "fetch_max_bytes": FETCH_BYTES, "max_partition_fetch_bytes": FETCH_BYTES}
        self._consumer = KafkaConsumer(**options, enable_auto_commit=False, check_crcs=True)
        partitions = _partitions(self._consumer)
        self._consumer.assign(partitions)
        self._consumer.seek_to_beginning(*partitions)
        self._producer = KafkaProducer(**kafka.producer_options())

    def run(self, stop: threading.Event) -> None:
        """Publish the current version, then process polls until ``stop`` is set."""
        self._publish([model_value(self.model_name, 0, self.server.parameters)])
        batch_id = 0
        while not stop.is_set():
            started_at = time.time()
            started = time.perf_counter()
            polled = self._consumer.poll(timeout_ms=500, max_records=self.max_records)
            records = [record for partition in sorted(polled, key=str) for record in polled[partition]]
            if not records:
                continue
            read = time.perf_counter()
            versions, accepted = self._handle(records)
            handled = time.perf_counter()
            self._publish(versions)
            published = time.perf_counter()
            seconds = {
                "read_kafka": round(read - started, 4),
                "validate_aggregate": round(handled - read, 4),
                "publish": round(published - handled, 4),
            }
            self._record(batch_id, started_at, len(records), accepted, len(versions), seconds)
            batch_id += 1

    def _handle(self, records: Sequence[Any]) -> tuple[list[bytes], int]:
        messages = [
            IntakeMessage(
                record,
                decode_update(record.value, record.key, self.kafka.max_message_bytes),
                datetime.fromtimestamp(record.timestamp / 1000, UTC),
            )
            for record in records
        ]
        judged = self.intake.step(messages, lambda message, decoded, update: None, now=datetime.now(UTC))
        for rejected in judged.rejected:
            reason = rejected.reason.value
            self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        versions = [*judged.versions, *self.server.ready_versions(datetime.now(UTC))]
        return [self._framed(version) for version in versions], len(judged.accepted)

    def _framed(self, version: NewVersion) -> bytes:
        parent_hash = self.parameter_hash
        self.parameter_hash = parameter_hash(version.parameters)
        return model_value(
            self.model_name,
            version.version,
            version.parameters,
            update_count=len(version.updates),
            parent_parameter_hash=parent_hash,
        )

    def _publish(self, values: Sequence[bytes]) -> None:
        if not values:
            return
        for value in values:
            self._producer.send(MODELS_TOPIC, key=self.model_name.encode(), value=value)
        self._producer.flush(timeout=60)

    def _record(
        self, batch_id: int, started_at: float, messages: int, accepted: int, versions: int, seconds: dict[str, float]
    ) -> None:
        finished_at = time.time()
        self.totals["batches"] += 1
        self.totals["messages"] += messages
        self.totals["accepted"] += accepted
        self.totals["rejected"] += messages - accepted
        self.totals["versions"] += versions
        self.recent_batches.append(
            {
                "sequence": self.totals["batches"],
                "batch_id": batch_id,
                "started_at": started_at,
                "finished_at": finished_at,
                "messages": messages,
                "accepted": accepted,
                "new_versions": versions,
                "current_version": self.server.version,
                "pending": len(self.server.pending),
                "seconds": seconds,
            }
        )
        document = {
            **self.totals,
            "rejected_by_reason": self.rejected_by_reason,
            "current_version": self.server.version,
            "pending": len(self.server.pending),
            "last_batch": {"batch_id": batch_id, "messages": messages, "accepted": accepted, "seconds": seconds},
            "batches_recorded": self.totals["batches"],
            "recent_batches": list(self.recent_batches),
            "updated_at": datetime.fromtimestamp(finished_at, UTC).isoformat(),
            "pid": os.getpid(),
        }
        temporary = self.status_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(document))
        temporary.replace(self.status_file)

    def close(self) -> None:
        """Close the consumer and the producer."""
        self._consumer.close()
        self._producer.close(timeout=30)


def _authenticity_problem(decoded: DecodedUpdate, public_keys: dict[str, Ed25519PublicKey]) -> Rejection | None:
    """The job's signature check: an enrolled key's Ed25519 signature over the signed bytes."""
    key = public_keys.get(decoded.header.client_id)
    if key is None:
        return Rejection(RejectionReason.UNKNOWN_CLIENT, f"no key for {decoded.header.client_id!r}")
    try:
        key.verify(decoded.signature, decoded.signed_bytes)
    except InvalidSignature:
        return Rejection(RejectionReason.BAD_SIGNATURE, "signature does not verify")
    return None


def read_public_keys(folder: Path) -> dict[str, Ed25519PublicKey]:
    """``<client_id>.pub`` files (hex raw Ed25519 keys) in ``folder``, by client id."""
    return {
        path.stem: Ed25519PublicKey.from_public_bytes(bytes.fromhex(path.read_text().strip()))
        for path in sorted(folder.glob("*.pub"))
    }


def _partitions(consumer: KafkaConsumer) -> list[TopicPartition]:
    deadline = time.monotonic() + 30
    while True:
        ids = consumer.partitions_for_topic(UPDATES_TOPIC)
        if ids:
            return [TopicPartition(UPDATES_TOPIC, partition) for partition in sorted(ids)]
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {UPDATES_TOPIC} does not exist; is the stack up?")
        time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bare loop until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--model-name", default="har-cnn")
    parser.add_argument("--initial-model", required=True, help="safetensors file of version 0")
    parser.add_argument("--status-file", required=True)
    parser.add_argument("--aggregation", default="{}", help="AggregationConfig fields as JSON")
    parser.add_argument("--max-records", type=int, default=500, help="most messages handled per poll")
    parser.add_argument("--public-keys", help="folder of <client_id>.pub files: verify signatures as the job does")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    loop = BareLoop(
        KafkaSettings.from_env(),
        args.model_name,
        decode_tensors(Path(args.initial_model).read_bytes()),
        AggregationConfig.from_dict(json.loads(args.aggregation)),
        status_file=Path(args.status_file),
        max_records=args.max_records,
        public_keys=read_public_keys(Path(args.public_keys)) if args.public_keys else None,
    )
    try:
        loop.run(stop)
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
