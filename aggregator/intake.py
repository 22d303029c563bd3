"""The intake step: decoded messages in; accepted, rejected and new versions out. No I/O.

Every driver that reads ``fl.updates`` (the Spark job, the bench's bare loop) judges each message here, in
order, against the :class:`~aggregator.server.AsyncServer` as it stands when the message comes: who signed
it (an injected check), whether ``created_at`` lies in the replay window of the broker's timestamp, whether
its id was seen before, whether its tensors fit the model and whether the server's staleness gate admits
it. An accepted update goes into the server's buffer at once, so a full buffer makes a version before the
next message is judged and staleness is exact; with the buffer policy's ``aggregate_bursts`` the step makes
its versions once every message is judged (a burst becomes one version). A message whose judging raises, for
whatever reason, becomes an ``internal_error`` rejection and the rest go on: one message never stops the step.

Messages carry a ``source`` of the driver's own type (a Spark row, a Kafka record) that comes back with the
verdict, so the driver writes its rows with the provenance it holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from aggregator._checks import check_aware
from aggregator.server import AsyncServer, NewVersion
from aggregator.strategies import PendingUpdate
from schemas.cohorts import in_cohort
from schemas.rejections import Rejection, RejectionReason
from schemas.validation import validate_update
from schemas.wire import DecodedUpdate

__all__ = [
    "Accepted",
    "Authenticator",
    "Intake",
    "IntakeMessage",
    "IntakeOutcome",
    "Rejected",
    "internal_error",
    "pending_update",
]

logger = logging.getLogger(__name__)

Source = TypeVar("Source")
Record = TypeVar("Record")

Authenticator = Callable[[DecodedUpdate], Rejection | None]
"""Who may contribute: a problem with the update's signature or client, or ``None`` (the job's key registry)."""


@dataclass(frozen=True)
class IntakeMessage(Generic[Source]):
    """One message as read: the driver's ``source``, what decoding made of it, and the broker's timestamp."""

    source: Source
    decoded: DecodedUpdate | Rejection
    sent_at: datetime


@dataclass(frozen=True, eq=False)
class Accepted(Generic[Source, Record]):
    """A message accepted into the buffer, with the driver's ``record`` of it (say, its ``updates`` row)."""

    source: Source
    decoded: DecodedUpdate
    update: PendingUpdate
    record: Record


@dataclass(frozen=True, eq=False)
class Rejected(Generic[Source]):
    """A message refused, with every problem found (the first one is the reason recorded)."""

    source: Source
    problems: tuple[Rejection, ...]
    decoded: DecodedUpdate | None

    @property
    def reason(self) -> RejectionReason:
        """The first problem's reason code."""
        return self.problems[0].reason


@dataclass(frozen=True, eq=False)
class IntakeOutcome(Generic[Source, Record]):
    """What one step did: accepted and rejected messages in their order, and the versions made meanwhile."""

    accepted: tuple[Accepted[Source, Record], ...]
    rejected: tuple[Rejected[Source], ...]
    versions: tuple[NewVersion, ...]


class Intake:
    """Judges messages for one model against ``server``; remembers the update ids it has seen.

    ``known_update_ids``: ids already accepted (the job loads them from ``updates``); a copy is kept and every
    accepted id is added. ``authenticate``: the signature and enrolment check (``None``: none).
    ``replay_window_seconds``: the most ``created_at`` may differ from the broker's timestamp (``None``: no
    limit). ``before_judging``: called with each update id before it is judged (fault injection in tests).
    """

    def __init__(
        self,
        server: AsyncServer,
        model_name: str,
        *,
        known_update_ids: Set[str] = frozenset(),
        authenticate: Authenticator | None = None,
        replay_window_seconds: float | None = None,
        before_judging: Callable[[str], None] | None = None,
    ) -> None:
        self.server = server
        self.model_name = model_name
        self.known_update_ids: set[str] = set(known_update_ids)
        self.authenticate = authenticate
        self.replay_window_seconds = replay_window_seconds
        self.before_judging = before_judging

    def step(
        self,
        messages: Iterable[IntakeMessage[Source]],
        record: Callable[[IntakeMessage[Source], DecodedUpdate, PendingUpdate], Record],
        *,
        now: datetime,
    ) -> IntakeOutcome[Source, Record]:
        """Judge ``messages`` in order; buffer the accepted ones and make the versions a full buffer calls for.

        ``record`` makes the driver's record of an accepted message; it runs as part of judging, so if it
        raises the message is rejected instead. ``now`` is the receive time of every message.
        The buffer's wait limit is the driver's to check (``server.ready_versions``).
        """
        check_aware("now", now)
        accepted: list[Accepted[Source, Record]] = []
        rejected: list[Rejected[Source]] = []
        versions: list[NewVersion] = []
        bursts = self.server.buffer_policy.aggregate_bursts
        for message in messages:
            verdict = self._judge_isolated(message, record, now)
            if isinstance(verdict, Rejected):
                rejected.append(verdict)
                continue
            accepted.append(verdict)
            if not bursts:
                versions += self.server.ready_versions(now, deadline=False)
        if bursts:
            versions += self.server.ready_versions(now, deadline=False)
        return IntakeOutcome(tuple(accepted), tuple(rejected), tuple(versions))

    def _judge_isolated(
        self,
        message: IntakeMessage[Source],
        record: Callable[[IntakeMessage[Source], DecodedUpdate, PendingUpdate], Record],
        now: datetime,
    ) -> Accepted[Source, Record] | Rejected[Source]:
        decoded = message.decoded
        try:
            return self._judge(message, record, now)
        except Exception as error:  # one message's failure never ends the step
            logger.exception("judging a message raised; recorded as internal_error")
            known = decoded if isinstance(decoded, DecodedUpdate) else None
            return Rejected(message.source, (internal_error(error),), known)

    def _judge(
        self,
        message: IntakeMessage[Source],
        record: Callable[[IntakeMessage[Source], DecodedUpdate, PendingUpdate], Record],
        now: datetime,
    ) -> Accepted[Source, Record] | Rejected[Source]:
        decoded = message.decoded
        if isinstance(decoded, Rejection):
            return Rejected(message.source, (decoded,), None)
        update_id = decoded.header.update_id
        if self.before_judging is not None:
            self.before_judging(update_id)
        problems = self.problems(decoded, message.sent_at)
        if problems:
            return Rejected(message.source, tuple(problems), decoded)
        update = pending_update(decoded, now)
        made = record(message, decoded, update)
        self.server.receive(update)
        self.known_update_ids.add(update_id)
        return Accepted(message.source, decoded, update, made)

    def problems(self, decoded: DecodedUpdate, sent_at: datetime) -> list[Rejection]:
        """Every reason ``decoded`` cannot enter the buffer now: authenticity, replay, duplicate, content, staleness."""
        server = self.server
        problems = validate_update(
            decoded,
            model_name=self.model_name,
            reference=server.parameters,
            current_version=server.version,
            max_staleness=server.intake_max_staleness,
        )
        update_id = decoded.header.update_id
        if update_id in self.known_update_ids:
            problems.insert(0, Rejection(RejectionReason.DUPLICATE_UPDATE, f"update_id {update_id} seen before"))
        problems[:0] = self._authenticity_problems(decoded, sent_at)
        cohort = self._cohort_problem(decoded)
        if cohort is not None:
            problems.append(cohort)
        return problems

    def _cohort_problem(self, decoded: DecodedUpdate) -> Rejection | None:
        """In a synchronous round with a cohort: an update of the open round from a client not drawn for it."""
        fraction = self.server.config.cohort_fraction
        header = decoded.header
        if fraction is None or header.base_version != self.server.version:
            return None  # a late or future update has its own problem already
        if in_cohort(self.model_name, header.base_version, header.client_id, fraction):
            return None
        return Rejection(
            RejectionReason.NOT_IN_COHORT,
            f"client {header.client_id!r} is not in the cohort of the round on version {header.base_version} "
            f"(cohort_fraction {fraction})",
        )

    def _authenticity_problems(self, decoded: DecodedUpdate, sent_at: datetime) -> list[Rejection]:
        """Signature from an enrolled, unrevoked key; ``created_at`` within the replay window of the send time."""
        problems = []
        if self.authenticate is not None:
            problem = self.authenticate(decoded)
            if problem is not None:
                problems.append(problem)
        window = self.replay_window_seconds
        if window is not None:
            skew = abs((decoded.header.created_at - sent_at).total_seconds())
            if skew > window:
                problems.append(
                    Rejection(
                        RejectionReason.OUTSIDE_REPLAY_WINDOW,
                        f"created_at {decoded.header.created_at.isoformat()} is {skew:.0f} s from the Kafka "
                        f"timestamp {sent_at.isoformat()} (window {window:.0f} s)",
                    )
                )
        return problems


def pending_update(decoded: DecodedUpdate, received_at: datetime) -> PendingUpdate:
    """The buffered form of an accepted update: its delta and the header fields the strategies weigh."""
    header = decoded.header
    metrics = header.metrics
    return PendingUpdate(
        update_id=header.update_id,
        delta=decoded.delta,
        base_version=header.base_version,
        sample_count=header.sample_count,
        received_at=received_at,
        client_id=header.client_id,
        training_steps=metrics.training_steps,
        validation_loss=metrics.validation_loss,
        validation_accuracy=metrics.validation_accuracy,
        validation_count=metrics.validation_count,
    )


def internal_error(error: Exception) -> Rejection:
    """The rejection of a message whose handling raised: the exception's type and text."""
    return Rejection(RejectionReason.INTERNAL_ERROR, f"{type(error).__name__}: {error}"[:1000])
