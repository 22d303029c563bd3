"""How the streaming job sees updates: its micro-batch trigger and the delay before clients see a version."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class JobCadence:
    """How the streaming job sees updates, for a simulation that predicts the pipeline.

    The job reads ``fl.updates`` in micro-batches every ``trigger_seconds``: every update that arrived before
    a batch begins is judged in that batch, in arrival order, against the version current at that moment, so
    a burst can make several versions from updates that were all computed from the same base. A version
    reaches clients only when the batch that made it has been written and published, ``publish_seconds``
    after the batch began; until then clients keep training from the last published version. A batch that
    overruns delays the next one (Spark starts it as soon as the previous ends).

    ``trigger_seconds=0``: a batch begins the moment an update arrives while the job is free, so each update
    is judged on its own; with ``publish_seconds=0`` as well (:data:`PER_ARRIVAL`) every version is seen at
    once, the simulator's idealized server.
    """

    trigger_seconds: float = 0.5
    """The job's default trigger interval."""
    publish_seconds: float = 1.0

    def __post_init__(self) -> None:
        """Reject a negative trigger or publishing time."""
        if not self.trigger_seconds >= 0:
            raise ValueError(f"trigger_seconds must be >= 0, got {self.trigger_seconds!r}")
        if not self.publish_seconds >= 0:
            raise ValueError(f"publish_seconds must be >= 0, got {self.publish_seconds!r}")

    @property
    def judges_on_arrival(self) -> bool:
        """Whether a free job judges an update the moment it arrives (no trigger interval)."""
        return self.trigger_seconds == 0

    def next_batch_at(self, arrived_at: float, job_free_at: float) -> float:
        """When the batch that takes an update arrived at ``arrived_at`` (or a deadline then) begins."""
        if self.judges_on_arrival:
            return max(arrived_at, job_free_at)
        return max(math.floor(arrived_at / self.trigger_seconds + 1) * self.trigger_seconds, job_free_at)


PER_ARRIVAL = JobCadence(trigger_seconds=0.0, publish_seconds=0.0)
"""Each update judged the moment it arrives and each version seen at once: the simulator's default."""
