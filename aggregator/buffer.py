"""When to aggregate: a buffer of ``buffer_size`` updates (FedBuff's K), or a wait limit on the oldest one."""

from dataclasses import dataclass
from datetime import datetime

from aggregator._checks import check_aware, check_int, check_positive
from aggregator.errors import InvalidBufferStateError, InvalidConfigError


@dataclass(frozen=True)
class BufferPolicy:
    """Aggregate once ``buffer_size`` updates are pending, or once the oldest has waited ``max_wait_seconds``.

    The wait limit keeps a quiet fleet from stalling the model; ``None`` disables it.
    """

    buffer_size: int
    max_wait_seconds: float | None = None

    def __post_init__(self) -> None:
        """Validate the fields: ``buffer_size >= 1``, ``max_wait_seconds`` finite and > 0 or ``None``."""
        check_int("buffer_size", self.buffer_size, minimum=1)
        if self.max_wait_seconds is not None:
            check_positive("max_wait_seconds", self.max_wait_seconds)

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
