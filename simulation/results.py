"""What a simulated run reports: the held-out curve, counts, stalenesses and the final weights."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Weights = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class CurvePoint:
    """The global model's held-out quality at one virtual instant."""

    virtual_seconds: float
    updates: int
    version: int
    accuracy: float
    macro_f1: float


@dataclass(frozen=True)
class UpdateTiming:
    """When one update was asked for, began training, from which version, and when it reached the server."""

    client_id: str
    asked_at: float
    training_started_at: float
    base_version: int
    arrived_at: float


@dataclass
class SimulationResult:
    """What one simulated run did and reached."""

    strategy: str
    curve: list[CurvePoint] = field(default_factory=list)
    final_weights: Weights = field(default_factory=dict)
    personal_weights: dict[str, Weights] = field(default_factory=dict)
    updates: int = 0
    rejected: int = 0
    versions: int = 0
    bytes_sent: int = 0
    virtual_seconds: float = 0.0
    round_seconds: list[float] = field(default_factory=list)
    client_updates: dict[str, int] = field(default_factory=dict)
    epsilon: float | None = None
    """With DP: epsilon spent by the versions made (the server's ledger); None without DP."""
    epsilon_assumption: str | None = None
    """What ``epsilon`` rests on (see ``schemas.rows.ModelVersionRow.epsilon_assumption``)."""
    privacy_budget_exhausted: bool = False
    """True when ``dp_epsilon_budget`` refused a version: the run stopped making versions there."""
    version_stalenesses: list[tuple[int, ...]] = field(default_factory=list)
    """Per version made, the staleness of each update in it (what ``model_versions.update_staleness`` holds)."""
    update_timings: list[UpdateTiming] = field(default_factory=list)
    """Every update that arrived, in arrival order."""
    version_published_at: dict[int, float] = field(default_factory=lambda: {0: 0.0})
    """Virtual seconds at which clients could first read each version (a version a later one of the same batch
    superseded before publication is absent)."""

    def time_to_accuracy(self, target: float) -> tuple[float, int] | None:
        """First ``(virtual seconds, updates)`` at which held-out accuracy reached ``target``, else None."""
        for point in self.curve:
            if point.accuracy >= target:
                return point.virtual_seconds, point.updates
        return None
