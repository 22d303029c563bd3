"""The one asynchronous federated server every driver runs: the job, the simulator and the bench's bare loop.

:class:`AsyncServer` owns what decides when and from what a version is made: the buffer of accepted
updates, the staleness gate (:meth:`AsyncServer.admits`), contribution bounds (one update per client per
version under differential privacy, :meth:`aggregator.BufferPolicy.next_version`), the version counter,
the server optimizer (with DP its clip norm and privacy ledger) and the epsilon budget. A driver hands it
accepted updates (:meth:`~AsyncServer.receive`) and asks for the versions that are due
(:meth:`~AsyncServer.ready_versions`); each comes back as a :class:`NewVersion` with the provenance a
``model_versions`` row records. The math of a version is the configured strategy's
(:func:`aggregator.strategies.make_strategy`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy.typing as npt

from aggregator._checks import check_aware, check_int
from aggregator.buffer import one_per_client
from aggregator.config import AggregationConfig
from aggregator.errors import InvalidStalenessError, InvalidUpdateError, ShapeMismatchError
from aggregator.privacy import BudgetCheck, PrivateServerOptimizer
from aggregator.server_optimizers import ServerOptimizer
from aggregator.strategies import AggregationResult, PendingUpdate, Strategy, make_strategy, strategy_class
from aggregator.weights import check_same_structure
from schemas.tensors import Tensors

__all__ = ["AsyncServer", "NewVersion", "VersionMaker"]

VersionMaker = Callable[[Tensors, int, Sequence[PendingUpdate], ServerOptimizer], AggregationResult]
"""Makes version ``current + 1`` as :meth:`aggregator.Strategy.aggregate` does (same arguments, same result),
somewhere else: the job's executors, for a model the driver does not hold (its parameters are then empty)."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class NewVersion:
    """A version the server just made, with everything its ``model_versions`` row records.

    ``updates``: the buffered updates it took, in arrival order, with their ``weights`` (as applied, so an
    audit recomputes the version from them) and ``stalenesses``. ``optimizer_state``: the server optimizer's
    state after this version. ``epsilon`` (DP only): spent up to and including this version, with what it
    assumes and whether the budget allows another one.
    """

    version: int
    parent_version: int
    parameters: Tensors
    updates: tuple[PendingUpdate, ...]
    weights: tuple[float, ...]
    stalenesses: tuple[int, ...]
    mean_staleness: float
    max_staleness: int
    optimizer_state: dict[str, npt.NDArray[Any]]
    epsilon: float | None
    epsilon_assumption: str | None
    privacy_budget_exhausted: bool | None
    federated_validation_loss: float | None
    federated_validation_accuracy: float | None
    parameter_hash: str | None = None
    """Set when ``parameters`` is empty because a :data:`VersionMaker` keeps the version elsewhere."""

    @property
    def update_ids(self) -> tuple[str, ...]:
        """The ids of the updates in this version, in arrival order."""
        return tuple(update.update_id for update in self.updates)


class AsyncServer:
    """Buffer, staleness gate, contribution bounds, version counter and server optimizer of one model.

    ``parameters`` and ``version``: the newest global version; ``optimizer_state``: its recorded optimizer
    state (``None``: fresh); ``pending``: accepted updates not yet in any version, in arrival order (a state
    rebuilt from tables). ``config`` must carry a ``dp_seed`` when DP is on (see
    :meth:`AggregationConfig.with_secret_dp_seed`). ``make_version``: where versions are computed (default: the
    strategy's ``aggregate``, here); with one that keeps them elsewhere, ``parameters`` and every delta are empty.
    """

    def __init__(
        self,
        config: AggregationConfig,
        parameters: Tensors,
        *,
        version: int = 0,
        optimizer_state: Mapping[str, npt.NDArray[Any]] | None = None,
        pending: Iterable[PendingUpdate] = (),
        make_version: VersionMaker | None = None,
    ) -> None:
        self.config = config
        self.strategy: Strategy = make_strategy(config)
        self._make_version: VersionMaker = make_version or self.strategy.aggregate
        self.buffer_policy = config.buffer
        self.intake_max_staleness: int | None = (
            0 if strategy_class(config.strategy).synchronous else config.staleness.max_staleness
        )
        """Updates staler than this are refused at intake (``None``: no limit); synchronous strategies take 0."""
        self.optimizer: ServerOptimizer = config.make_optimizer()
        if optimizer_state:
            self.optimizer.load_state_dict(optimizer_state)
        self._parameters = dict(parameters)
        self._version = check_int("version", version, minimum=0)
        self._pending: list[PendingUpdate] = []
        self.privacy_refusal: BudgetCheck | None = None
        """Set while the epsilon budget refuses the next version (the buffer is held); ``None`` otherwise."""
        for update in pending:
            self.receive(update)

    @property
    def version(self) -> int:
        """The newest global version."""
        return self._version

    @property
    def parameters(self) -> Tensors:
        """The newest global parameters (do not modify them)."""
        return self._parameters

    @property
    def pending(self) -> tuple[PendingUpdate, ...]:
        """Accepted updates waiting for a version, in arrival order."""
        return tuple(self._pending)

    def staleness(self, base_version: int) -> int:
        """``version - base_version``; ``InvalidStalenessError`` for a version the server has not made."""
        check_int("base_version", base_version, minimum=0)
        if base_version > self._version:
            raise InvalidStalenessError(
                f"base_version {base_version} is newer than the current version {self._version}"
            )
        return self._version - base_version

    def admits(self, base_version: int) -> bool:
        """The staleness gate: whether an update trained on ``base_version`` may enter the buffer now."""
        if base_version > self._version:
            return False
        limit = self.intake_max_staleness
        return limit is None or self._version - base_version <= limit

    def receive(self, update: PendingUpdate) -> None:
        """Put an accepted update into the buffer (its staleness was gated at intake; see :meth:`admits`).

        Raises ``InvalidStalenessError`` for a base version the server has not made, ``InvalidUpdateError``
        for an id already pending, ``ShapeMismatchError`` for a delta that does not fit the parameters.
        """
        self.staleness(update.base_version)
        if any(waiting.update_id == update.update_id for waiting in self._pending):
            raise InvalidUpdateError(f"update {update.update_id!r} is already pending")
        try:
            check_same_structure(self._parameters, update.delta)
        except ShapeMismatchError as error:
            raise ShapeMismatchError(
                f"delta of update {update.update_id!r} does not fit the global model: {error}"
            ) from None
        self._pending.append(update)

    def oldest_pending_at(self) -> datetime | None:
        """When the oldest pending update arrived (``None`` when nothing is pending)."""
        return min((update.received_at for update in self._pending), default=None)

    def deadline(self) -> datetime | None:
        """When the buffer's wait limit lets the pending updates make a version (``None``: no limit or empty)."""
        oldest = self.oldest_pending_at()
        limit = self.buffer_policy.max_wait_seconds
        if oldest is None or limit is None:
            return None
        deadline = oldest + timedelta(seconds=limit)
        if (deadline - oldest).total_seconds() < limit:  # timedelta rounds to microseconds
            deadline += timedelta(microseconds=1)
        return deadline

    def budget_check(self) -> BudgetCheck | None:
        """Whether the next version fits ``dp_epsilon_budget``; ``None`` without DP or without a budget."""
        optimizer = self.optimizer
        return optimizer.budget_check() if isinstance(optimizer, PrivateServerOptimizer) else None

    def ready_versions(self, now: datetime, *, deadline: bool = True) -> list[NewVersion]:
        """Make every version the buffer policy allows at ``now``, oldest updates first; ``[]``: wait.

        ``deadline=False`` lets only a full buffer make a version (the job checks the wait limit at the end of
        a micro-batch). A version the epsilon budget refuses is not made: the buffer is held and
        :attr:`privacy_refusal` says why.
        """
        check_aware("now", now)
        made: list[NewVersion] = []
        while self._pending:
            chosen = self.buffer_policy.next_version(
                [update.client_id for update in self._pending],
                self.oldest_pending_at(),
                now,
                bound_clients=self.config.bounds_contributions,
                deadline=deadline,
            )
            if not chosen or self._budget_refuses():
                break
            made.append(self._make(chosen))
        return made

    def drain(self) -> list[NewVersion]:
        """Versions of every pending update, ``buffer_size`` (distinct clients under DP) at a time: a final flush."""
        made: list[NewVersion] = []
        while self._pending and not self._budget_refuses():
            if self.config.bounds_contributions:
                chosen = one_per_client([update.client_id for update in self._pending], self.buffer_policy.buffer_size)
            else:
                chosen = tuple(range(min(len(self._pending), self.buffer_policy.buffer_size)))
            made.append(self._make(chosen))
        return made

    def close_round(self) -> NewVersion | None:
        """One version of every pending update, whatever the buffer size: the end of a synchronous round.

        ``None`` when nothing is pending or the epsilon budget refuses the version.
        """
        if not self._pending or self._budget_refuses():
            return None
        return self._make(tuple(range(len(self._pending))))

    def _budget_refuses(self) -> bool:
        check = self.budget_check()
        if check is None or check.allows_next:
            self.privacy_refusal = None
            return False
        if self.privacy_refusal is None:
            logger.warning("%s (%d updates held)", check.describe(), len(self._pending))
        self.privacy_refusal = check
        return True

    def _make(self, positions: Sequence[int]) -> NewVersion:
        taken = [self._pending[position] for position in positions]
        result = self._make_version(self._parameters, self._version, taken, self.optimizer)
        chosen = set(positions)
        self._pending = [update for position, update in enumerate(self._pending) if position not in chosen]
        parent = self._version
        self._version += 1
        self._parameters = result.new_params
        epsilon, assumption, exhausted = self._privacy_fields()
        return NewVersion(
            version=self._version,
            parent_version=parent,
            parameters=result.new_params,
            updates=tuple(taken),
            weights=result.weights,
            stalenesses=result.stalenesses,
            mean_staleness=result.mean_staleness,
            max_staleness=result.max_staleness,
            optimizer_state=self.optimizer.state_dict(),
            epsilon=epsilon,
            epsilon_assumption=assumption,
            privacy_budget_exhausted=exhausted,
            federated_validation_loss=_weighted_metric(taken, "validation_loss"),
            federated_validation_accuracy=_weighted_metric(taken, "validation_accuracy"),
            parameter_hash=result.parameter_hash,
        )

    def _privacy_fields(self) -> tuple[float | None, str | None, bool | None]:
        """``epsilon``, ``epsilon_assumption`` and ``privacy_budget_exhausted`` of the version just made."""
        optimizer = self.optimizer
        if not isinstance(optimizer, PrivateServerOptimizer):
            return None, None, None
        ledger = optimizer.ledger
        assumption = ledger.assumption()
        if ledger.versions < self._version:
            uncovered = self._version - ledger.versions
            assumption = f"{assumption}; versions 1-{uncovered} were made without DP and are not covered"
        check = optimizer.budget_check()
        return optimizer.epsilon_spent(), assumption, None if check is None else not check.allows_next


def _weighted_metric(taken: Sequence[PendingUpdate], name: str) -> float | None:
    """The clients' ``validation_loss`` or ``validation_accuracy``, weighted by their validation counts."""
    pairs: list[tuple[float | None, int]] = [(getattr(update, name), update.validation_count) for update in taken]
    usable = [(value, count) for value, count in pairs if value is not None and count > 0]
    total = sum(count for _, count in usable)
    if not total:
        return None
    return math.fsum(value * count for value, count in usable) / total
