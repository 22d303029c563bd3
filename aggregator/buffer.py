"""When to aggregate and what: a buffer of ``buffer_size`` updates (FedBuff's K), or a wait limit on the oldest one.

Every driver (the streaming job, the simulator) asks :meth:`BufferPolicy.next_version` which pending updates
the next version takes, so contribution bounds hold wherever versions are made.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from aggregator._checks import check_aware, check_int, check_positive
from aggregator.errors import InvalidBufferStateError, InvalidConfigError, InvalidUpdateError


def one_per_client(client_ids: Sequence[str | None], limit: int) -> tuple[int, ...]:
    """Positions of the first ``limit`` pending updates in arrival order, taking at most one per client.

    Client-level differential privacy bounds what one client adds to a version: a client's second update
    is skipped here and stays pending, in its place, for a later version. Every update must name its
    client (``None`` raises ``InvalidUpdateError``): a bound over unknown clients would be no bound.
    """
    check_int("limit", limit, minimum=0)
    chosen: list[int] = []
    seen: set[str] = set()
    for position, client_id in enumerate(client_ids):
        if len(chosen) == limit:
            break
        if not isinstance(client_id, str) or not client_id:
            raise InvalidUpdateError(
                f"pending update at position {position} has client_id {client_id!r}; bounding each client to one "
                "update per version needs every update's client"
            )
        if client_id in seen:
            continue
        seen.add(client_id)
        chosen.append(position)
    return tuple(chosen)


@dataclass(frozen=True)
class BufferPolicy:
    """Aggregate once ``buffer_size`` updates are pending, or once the oldest has waited ``max_wait_seconds``.

    The wait limit keeps a quiet fleet from stalling the model; ``None`` disables it. ``aggregate_bursts``:
    a micro-batch that brings more than ``buffer_size`` updates makes one version of all of them, at the end of
    the batch, instead of one version per ``buffer_size`` (each a full server step from updates that were all
    trained on older versions); ``buffer_size`` is then the least a version takes.
    """

    JSON_KEYS: ClassVar[Mapping[str, str]] = {
        "buffer_size": "buffer_size",
        "max_wait_seconds": "max_wait_seconds",
        "aggregate_bursts": "aggregate_bursts",
    }
    """Each field's key in the aggregation JSON (``config_json``)."""
    JSON_WHEN_SET: ClassVar[frozenset[str]] = frozenset({"aggregate_bursts"})
    """Keys written only when they differ from their defaults (so older ``config_json`` keeps its form)."""

    buffer_size: int
    max_wait_seconds: float | None = None
    aggregate_bursts: bool = False

    def __post_init__(self) -> None:
        """Validate the fields: ``buffer_size >= 1``, ``max_wait_seconds`` finite and > 0 or ``None``."""
        check_int("buffer_size", self.buffer_size, minimum=1)
        if self.max_wait_seconds is not None:
            check_positive("max_wait_seconds", self.max_wait_seconds)
        if not isinstance(self.aggregate_bursts, bool):
            raise InvalidConfigError(f"aggregate_bursts must be a bool, got {self.aggregate_bursts!r}")

    def should_aggregate(self, pending_count: int, oldest_received_at: datetime | None, now: datetime) -> bool:
        """Return whether the pending updates should be aggregated now.

        ``oldest_received_at`` is the receive time of the oldest pending update (``None`` when nothing is
        pending); both datetimes must be timezone-aware.
        """
        try:
            check_int("pending_count", pending_count, minimum=0)
        except InvalidConfigError as error:
            raise InvalidBufferStateError(str(error)) from None
        check_aware("now", now)
        if oldest_received_at is not None:
            check_aware("oldest_received_at", oldest_received_at)
        if pending_count == 0:
            return False
        if pending_count >= self.buffer_size:
            return True
        if self.max_wait_seconds is None:
            return False
        if oldest_received_at is None:
            raise InvalidBufferStateError(
                f"oldest_received_at is None but pending_count is {pending_count}; "
                "the wait limit needs the oldest pending update's receive time"
            )
        waited_seconds = (now - oldest_received_at).total_seconds()
        return waited_seconds >= self.max_wait_seconds

    def next_version(
        self,
        client_ids: Sequence[str | None],
        oldest_received_at: datetime | None,
        now: datetime,
        *,
        bound_clients: bool,
        deadline: bool = True,
    ) -> tuple[int, ...]:
        """Positions (in arrival order) of the pending updates the next version takes now; ``()``: wait.

        ``client_ids``: the pending updates' clients, oldest first. ``bound_clients``: at most one update
        per client (:func:`one_per_client`); the buffer is then full once ``buffer_size`` distinct clients
        wait, and the wait limit makes a version of the distinct clients there are. ``deadline=False``
        lets only a full buffer aggregate (the job checks the wait limit at the end of a micro-batch).
        """
        if bound_clients:
            chosen = one_per_client(client_ids, self.buffer_size)
        elif self.aggregate_bursts and len(client_ids) >= self.buffer_size:
            return tuple(range(len(client_ids)))
        else:
            chosen = tuple(range(min(len(client_ids), self.buffer_size)))
        if not chosen or len(chosen) >= self.buffer_size:
            return chosen
        if not deadline:
            return ()
        return chosen if self.should_aggregate(len(chosen), oldest_received_at, now) else ()
