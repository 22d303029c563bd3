"""Enrolled client keys: the ``client_keys`` Delta table, and signature checks against it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pyspark.sql import SparkSession

from schemas.rejections import Rejection, RejectionReason
from schemas.rows import ClientKeyRow
from schemas.wire import DecodedUpdate
from streaming_jobs.tables import CLIENT_KEYS, TableLocations

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyState:
    """A client's newest enrolment record."""

    public_key: bytes
    revoked: bool


def enrol(spark: SparkSession, locations: TableLocations, keys: Iterable[tuple[str, bytes]]) -> int:
    """Enrol ``(client_id, raw public key)`` pairs; returns how many rows were written."""
    now = datetime.now(UTC)
    rows = [
        ClientKeyRow(client_id=client_id, public_key=key, action="enrol", recorded_at=now) for client_id, key in keys
    ]
    for row in rows:
        Ed25519PublicKey.from_public_bytes(row.public_key)  # refuses a malformed key before it is stored
    locations.append(spark, CLIENT_KEYS, rows, app_id=None, batch_id=None)
    return len(rows)


def revoke(spark: SparkSession, locations: TableLocations, client_ids: Iterable[str]) -> int:
    """Revoke the keys of ``client_ids``: their later updates are rejected with ``revoked_client``."""
    current = load_keys(spark, locations)
    now = datetime.now(UTC)
    rows = []
    for client_id in client_ids:
        if client_id not in current:
            raise LookupError(f"client {client_id!r} was never enrolled")
        rows.append(
            ClientKeyRow(
                client_id=client_id, public_key=current[client_id].public_key, action="revoke", recorded_at=now
            )
        )
    locations.append(spark, CLIENT_KEYS, rows, app_id=None, batch_id=None)
    return len(rows)


def load_keys(spark: SparkSession, locations: TableLocations) -> dict[str, KeyState]:
    """Each client's newest record (later rows win)."""
    rows = locations.read(spark, CLIENT_KEYS).orderBy("recorded_at").collect()
    keys: dict[str, KeyState] = {}
    for row in rows:
        keys[row.client_id] = KeyState(public_key=bytes(row.public_key), revoked=row.action == "revoke")
    return keys


class ClientRegistry:
    """The job's view of enrolled keys, re-read from Delta every ``refresh_seconds``, off the batch's path.

    A micro-batch that finds its keys older than ``refresh_seconds`` starts a re-read in the background and
    judges by the keys it has; it waits for a read only when they are older than twice that (the first batch,
    a batch after a quiet spell, or a background read that failed or fell behind). So a revocation is in
    effect within ``2 × refresh_seconds``, and a busy job no longer stalls a batch for the read every time.
    """

    def __init__(
        self,
        spark: SparkSession,
        locations: TableLocations,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spark = spark
        self.locations = locations
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._keys: dict[str, KeyState] = {}
        self._read_at = float("-inf")
        """``clock()`` when the read that gave ``_keys`` began: the moment those keys were current."""
        self._lock = threading.Lock()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedstream-key-registry")
        self._reading: Future[None] | None = None

    def refresh_if_due(self) -> None:
        """Re-read the table when the keys are older than ``refresh_seconds``: waiting only past twice that."""
        age = self._clock() - self._read_at
        if age >= 2 * self.refresh_seconds:
            self._read()
        elif age >= self.refresh_seconds and (self._reading is None or self._reading.done()):
            self._reading = self._reader.submit(self._read_in_background)

    def _read(self) -> None:
        started = self._clock()
        keys = load_keys(self.spark, self.locations)
        with self._lock:
            if started > self._read_at:  # a slower, older read never replaces a newer one
                self._keys, self._read_at = keys, started

    def _read_in_background(self) -> None:
        try:
            self._read()
        except Exception:  # the keys age; past twice refresh_seconds a batch reads them itself, and fails if it must
            logger.warning("re-reading client_keys in the background failed", exc_info=True)

    def check(self, update: DecodedUpdate) -> Rejection | None:
        """Why ``update`` is not from an enrolled, unrevoked client holding its key; None when it is."""
        client_id = update.header.client_id
        if not update.is_signed:
            return Rejection(RejectionReason.UNSIGNED, f"update from {client_id!r} carries no signature")
        state = self._keys.get(client_id)
        if state is None:
            return Rejection(RejectionReason.UNKNOWN_CLIENT, f"no enrolled key for client {client_id!r}")
        if state.revoked:
            return Rejection(RejectionReason.REVOKED_CLIENT, f"the key of client {client_id!r} was revoked")
        try:
            Ed25519PublicKey.from_public_bytes(state.public_key).verify(update.signature, update.signed_bytes)
        except InvalidSignature:
            return Rejection(RejectionReason.BAD_SIGNATURE, f"signature does not verify with {client_id!r}'s key")
        return None


def public_keys_in(location: str) -> list[tuple[str, bytes]]:
    """``(client_id, key)`` of a ``<client_id>.pub`` file (hex-encoded raw key), or of every one in a folder."""
    from pathlib import Path

    root = Path(location)
    paths = sorted(root.glob("*.pub")) if root.is_dir() else [root]
    keys = []
    for path in paths:
        raw = bytes.fromhex(path.read_text().strip())
        if len(raw) != 32:
            raise ValueError(f"{path}: an Ed25519 public key is 32 bytes, found {len(raw)}")
        keys.append((path.stem, raw))
    return keys


def enrol_new_keys(spark: SparkSession, locations: TableLocations, keys: Iterable[tuple[str, bytes]]) -> int:
    """Enrol only keys that are not already the client's current, unrevoked key (idempotent)."""
    current = load_keys(spark, locations)
    fresh = [
        (client_id, key)
        for client_id, key in keys
        if client_id not in current or current[client_id].public_key != key or current[client_id].revoked
    ]
    return enrol(spark, locations, fresh) if fresh else 0


def enrolled_client_count(spark: SparkSession, locations: TableLocations) -> int:
    """Clients whose newest record is an unrevoked enrolment: those who can sign an update the job accepts."""
    return sum(1 for state in load_keys(spark, locations).values() if not state.revoked)
