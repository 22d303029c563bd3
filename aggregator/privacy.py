"""Client-level differential privacy at the server (DP-FedAvg, McMahan et al. 2018) and its accountant.

Each buffered delta is clipped to L2 norm ``C``; the deltas are averaged with weights ``f(s_i) / n`` (every
weight at most ``1 / n``, so one client moves the sum by at most ``C / n``), and Gaussian noise of standard
deviation ``sigma * C / n`` is added before the server optimizer's step: that is ``N(0, (sigma C)^2)`` on
the sum of clipped deltas, then divided by ``n``. Sample counts are client-reported and would make the
sensitivity unbounded, so DP needs ``weight_by_sample_count=False``.

The noise comes from ``numpy.random.default_rng([seed, version, 0])``, parameter by parameter in name
order, so an audit regenerates it exactly from the configured seed and the version number.

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping"): after
each version, ``C <- C * exp(-eta * (b - gamma))`` where ``b`` is the noised fraction of updates with norm
at most ``C`` and ``gamma`` the target quantile. The count noise has standard deviation ``sigma_b``; the
delta noise multiplier is raised to ``(sigma^-2 - (2 sigma_b)^-2)^-1/2`` so that the two releases together
are worth exactly ``sigma`` to the accountant. ``C`` is server state: :class:`PrivateServerOptimizer`
keeps it (and the version its state belongs to) next to the optimizer's moments, so it is stored in every
version's ``optimizer_state`` and restored from there after a restart or for an audit.

What ``epsilon`` means. The drivers give each version at most one update per client
(:func:`aggregator.buffer.one_per_client`), so one client moves a version's clipped sum by at most ``C``.
Neighbouring runs differ in one client's updates replaced by zeros ("zero-out" adjacency, Kairouz et al.
2021): the number of updates in a version is public (it is in the version row and on ``fl.models``). Each
version is then one Gaussian mechanism with noise multiplier ``sigma`` over the clients in it, and a
:class:`PrivacyLedger` composes the versions actually made in Rényi DP and converts to ``(epsilon, delta)``
with Google's ``dp-accounting``; a client in every version is covered.

Sampling amplification is claimed only when participation is random by construction:
``participation="arbitrary"`` (the default: an asynchronous buffer takes whoever arrives first, which is
no random sample) accounts every version with ``q = 1``. ``participation="random_check_in"`` states that
every one of ``population`` clients joins each version by its own coin with probability
``q = buffer_size / population`` (random check-ins, Balle et al. 2020), and accounts each version as a
Poisson-subsampled Gaussian with that ``q``. fedstream does not enforce the coin on the clients: that
setting is an operator's claim about the fleet, recorded next to every epsilon it produced
(:meth:`PrivacyLedger.assumption`). A version can also be refused when it would take epsilon past
``epsilon_budget`` (:meth:`PrivateServerOptimizer.budget_check`).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Final, Literal, get_args

import numpy as np
import numpy.typing as npt

from aggregator._checks import check_int, check_non_negative, check_positive
from aggregator.errors import InvalidConfigError, InvalidStateError, ShapeMismatchError
from aggregator.server_optimizers import Float64Array, ServerOptimizer
from aggregator.shards import Shard, shard_bounds
from aggregator.weights import WeightsLike, add
from schemas.tensors import Tensors

CLIP_NORM_KEY: Final = "dp/clip_norm"
"""State key of the clip norm in force for the next version (0-d float64)."""
VERSION_KEY: Final = "dp/version"
"""State key of the version this state belongs to (0-d int64)."""
LEDGER_NOISE_KEY: Final = "dp/ledger_noise_multipliers"
"""State key of the ledger's noise multipliers, one per distinct mechanism (1-d float64)."""
LEDGER_RATE_KEY: Final = "dp/ledger_sampling_rates"
"""State key of the ledger's sampling rates, one per distinct mechanism (1-d float64)."""
LEDGER_COUNT_KEY: Final = "dp/ledger_versions"
"""State key of how many versions ran each of the ledger's mechanisms (1-d int64)."""
_LEDGER_KEYS: Final = (LEDGER_NOISE_KEY, LEDGER_RATE_KEY, LEDGER_COUNT_KEY)

DpParticipation = Literal["arbitrary", "random_check_in"]
"""How clients come to be in a version: whoever arrives (no amplification), or each by its own coin."""
DP_PARTICIPATIONS: Final[tuple[str, ...]] = get_args(DpParticipation)
NoiseStreams = Literal["shard", "model"]
NOISE_STREAMS: Final[tuple[str, ...]] = get_args(NoiseStreams)
NO_AMPLIFICATION: Final = "no_amplification"
"""The ``epsilon_assumption`` of versions accounted with ``q = 1``."""

__all__ = [
    "CLIP_NORM_KEY",
    "DP_PARTICIPATIONS",
    "LEDGER_COUNT_KEY",
    "LEDGER_NOISE_KEY",
    "LEDGER_RATE_KEY",
    "NOISE_STREAMS",
    "NO_AMPLIFICATION",
    "VERSION_KEY",
    "BudgetCheck",
    "DpParticipation",
    "NoiseStreams",
    "PrivacyLedger",
    "PrivacyPolicy",
    "PrivateServerOptimizer",
    "describe_sampling",
    "epsilon_after",
    "gaussian_noise",
]


@dataclass(frozen=True)
class PrivacyPolicy:
    """The DP settings of a job; validated on construction.

    ``noise_multiplier``: ``sigma``, the accountant's noise-to-sensitivity ratio per version.
    ``clip_norm``: ``C`` (the starting value when ``adaptive_clipping``).
    ``target_quantile``, ``clip_learning_rate``: adaptive clipping's ``gamma`` and ``eta``.
    ``clip_count_noise_multiplier``: ``sigma_b``, noise on the count of unclipped updates (``None``: ``sigma``).
    ``seed``: with the version number, seeds the noise (``None`` until a driver draws a secret one, see
    :meth:`aggregator.AggregationConfig.with_secret_dp_seed`). ``population``: clients that may take part
    (``None``: unknown; ``random_check_in`` needs it before a version is accounted). ``delta``: the ``delta``
    of the reported ``(epsilon, delta)``. ``participation``: see the module docstring. ``epsilon_budget``:
    the most epsilon the versions may spend (``None``: no limit). The updates per version (``buffer_size``,
    the sampling rate's numerator) belong to the buffer policy and are passed where they matter.
    """

    JSON_KEYS: ClassVar[Mapping[str, str]] = {
        "noise_multiplier": "dp_noise_multiplier",
        "clip_norm": "dp_clip_norm",
        "adaptive_clipping": "dp_adaptive_clipping",
        "target_quantile": "dp_target_quantile",
        "clip_learning_rate": "dp_clip_learning_rate",
        "clip_count_noise_multiplier": "dp_clip_count_noise_multiplier",
        "population": "dp_population",
        "delta": "dp_delta",
        "seed": "dp_seed",
        "participation": "dp_participation",
        "epsilon_budget": "dp_epsilon_budget",
        "noise_streams": "dp_noise_streams",
    }
    """Each field's key in the aggregation JSON (``config_json``)."""

    noise_multiplier: float
    clip_norm: float = 1.0
    population: int | None = None
    delta: float = 1e-5
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clip_count_noise_multiplier: float | None = None
    seed: int | None = None
    participation: DpParticipation = "arbitrary"
    epsilon_budget: float | None = None
    noise_streams: NoiseStreams = "shard"

    def __post_init__(self) -> None:
        """Reject values that make the mechanism or the accountant meaningless, naming them."""
        check_positive("dp_noise_multiplier", self.noise_multiplier)
        check_positive("dp_clip_norm", self.clip_norm)
        if self.population is not None:
            check_int("dp_population", self.population, minimum=1)
        if self.participation not in DP_PARTICIPATIONS:
            raise InvalidConfigError(
                f"dp_participation must be one of {list(DP_PARTICIPATIONS)}, got {self.participation!r}"
            )
        check_positive("dp_delta", self.delta)
        if self.delta >= 1:
            raise InvalidConfigError(f"dp_delta must be < 1, got {self.delta!r}")
        if not isinstance(self.adaptive_clipping, bool):
            raise InvalidConfigError(f"dp_adaptive_clipping must be a bool, got {self.adaptive_clipping!r}")
        check_positive("dp_target_quantile", self.target_quantile)
        if self.target_quantile >= 1:
            raise InvalidConfigError(f"dp_target_quantile must be in (0, 1), got {self.target_quantile!r}")
        check_non_negative("dp_clip_learning_rate", self.clip_learning_rate)
        if self.clip_count_noise_multiplier is not None:
            check_positive("dp_clip_count_noise_multiplier", self.clip_count_noise_multiplier)
        if self.seed is not None:
            check_int("dp_seed", self.seed, minimum=0)
        if self.epsilon_budget is not None:
            check_positive("dp_epsilon_budget", self.epsilon_budget)
        if self.noise_streams not in NOISE_STREAMS:
            raise InvalidConfigError(
                f"dp_noise_streams must be one of {list(NOISE_STREAMS)}, got {self.noise_streams!r}"
            )
        if self.adaptive_clipping and 2 * self.count_noise_multiplier <= self.noise_multiplier:
            raise InvalidConfigError(
                f"dp_clip_count_noise_multiplier ({self.count_noise_multiplier}) must exceed half of "
                f"dp_noise_multiplier ({self.noise_multiplier}) for adaptive clipping to fit its budget"
            )

    def check_buffer_size(self, buffer_size: int) -> None:
        """Refuse a buffer that needs more distinct clients than ``population`` (a sampling rate above 1)."""
        if self.population is not None and buffer_size > self.population:
            raise InvalidConfigError(
                f"buffer_size ({buffer_size}) exceeds dp_population ({self.population}): a version takes "
                f"at most one update per client, so it would need {buffer_size} of {self.population} "
                f"clients (sampling rate {buffer_size}/{self.population} > 1 is impossible)"
            )

    def sampling_rate(self, buffer_size: int) -> float:
        """The ``q`` each version is accounted with: 1 (no amplification), or ``buffer_size / population``.

        Raises ``InvalidConfigError`` under ``random_check_in`` while the population is unknown.
        """
        if self.participation == "arbitrary":
            return 1.0
        if self.population is None:
            raise InvalidConfigError(
                "dp_participation 'random_check_in' accounts q = buffer_size / dp_population, but dp_population is "
                "unknown: set it, or let the job derive it from the enrolled, unrevoked clients"
            )
        return buffer_size / self.population

    def assumption(self, buffer_size: int) -> str:
        """What the epsilon of a version made under this policy rests on (see :func:`describe_sampling`)."""
        return describe_sampling(self.sampling_rate(buffer_size))

    @property
    def count_noise_multiplier(self) -> float:
        """``sigma_b``: standard deviation of the noise on the count of unclipped updates."""
        return self.noise_multiplier if self.clip_count_noise_multiplier is None else self.clip_count_noise_multiplier

    @property
    def delta_noise_multiplier(self) -> float:
        """Noise multiplier of the deltas: ``sigma``, or more with adaptive clipping (its count costs too)."""
        if not self.adaptive_clipping:
            return self.noise_multiplier
        return float((self.noise_multiplier**-2 - (2 * self.count_noise_multiplier) ** -2) ** -0.5)

    def epsilon(self, versions: int, buffer_size: int) -> float:
        """``epsilon`` after ``versions`` versions of ``buffer_size`` updates each (see :func:`epsilon_after`)."""
        return epsilon_after(self.noise_multiplier, self.sampling_rate(buffer_size), versions, self.delta)


def describe_sampling(sampling_rate: float) -> str:
    """``"no_amplification"`` for ``q = 1``, else ``"poisson_subsampling q=<q>"``: an ``epsilon_assumption``."""
    return NO_AMPLIFICATION if sampling_rate >= 1 else f"poisson_subsampling q={sampling_rate:.6g}"


@dataclass(frozen=True)
class PrivacyLedger:
    """The Gaussian mechanisms the versions ran: ``(noise multiplier, sampling rate, versions)`` triples.

    Rényi DP composes by addition, so the order of versions does not matter and identical mechanisms are
    counted together. A restart with other DP settings adds a new triple; epsilon stays that of the versions
    actually made.
    """

    entries: tuple[tuple[float, float, int], ...] = ()

    def __post_init__(self) -> None:
        """Reject impossible entries: a non-positive sigma, ``q`` outside ``(0, 1]``, a count below 1."""
        for noise_multiplier, sampling_rate, count in self.entries:
            check_positive("ledger noise multiplier", noise_multiplier)
            check_positive("ledger sampling rate", sampling_rate)
            if sampling_rate > 1:
                raise InvalidStateError(f"ledger sampling rate must be <= 1, got {sampling_rate!r}")
            check_int("ledger version count", count, minimum=1)

    @property
    def versions(self) -> int:
        """How many versions the ledger accounts."""
        return sum(count for _, _, count in self.entries)

    def add(self, noise_multiplier: float, sampling_rate: float, versions: int = 1) -> "PrivacyLedger":
        """The ledger with ``versions`` more versions of the Gaussian mechanism ``(sigma, q)``."""
        entries = list(self.entries)
        for index, (sigma, rate, count) in enumerate(entries):
            if (sigma, rate) == (noise_multiplier, sampling_rate):
                entries[index] = (sigma, rate, count + versions)
                return PrivacyLedger(tuple(entries))
        return PrivacyLedger((*entries, (float(noise_multiplier), float(sampling_rate), versions)))

    def epsilon(self, delta: float) -> float:
        """``epsilon`` of every accounted version together, for ``delta`` (0 for an empty ledger)."""
        check_positive("delta", delta)
        if not self.entries:
            return 0.0
        return _ledger_epsilon(self.entries, float(delta))

    def assumption(self) -> str | None:
        """What the epsilon rests on: one :func:`describe_sampling` text, or each with its version count."""
        counts: dict[str, int] = {}
        for _, sampling_rate, count in self.entries:
            text = describe_sampling(sampling_rate)
            counts[text] = counts.get(text, 0) + count
        if len(counts) <= 1:
            return next(iter(counts), None)
        return "; ".join(f"{text} ({count} versions)" for text, count in counts.items())

    def state_dict(self) -> dict[str, npt.NDArray[Any]]:
        """The ledger as three 1-d arrays (none when empty)."""
        if not self.entries:
            return {}
        return {
            LEDGER_NOISE_KEY: np.array([sigma for sigma, _, _ in self.entries], dtype=np.float64),
            LEDGER_RATE_KEY: np.array([rate for _, rate, _ in self.entries], dtype=np.float64),
            LEDGER_COUNT_KEY: np.array([count for _, _, count in self.entries], dtype=np.int64),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, npt.NDArray[Any]]) -> "PrivacyLedger":
        """Read the ledger's arrays from an optimizer state (all three or none)."""
        present = [key for key in _LEDGER_KEYS if key in state]
        if not present:
            return cls()
        if len(present) != len(_LEDGER_KEYS):
            raise InvalidStateError(f"the DP ledger needs all of {list(_LEDGER_KEYS)}, got only {present}")
        sigmas, rates, counts = (np.asarray(state[key]) for key in _LEDGER_KEYS)
        if not (sigmas.ndim == rates.ndim == counts.ndim == 1 and sigmas.shape == rates.shape == counts.shape):
            raise InvalidStateError(
                f"the DP ledger arrays must be 1-d of one length, got shapes {sigmas.shape}, {rates.shape}, "
                f"{counts.shape}"
            )
        if not np.issubdtype(counts.dtype, np.integer):
            raise InvalidStateError(f"{LEDGER_COUNT_KEY!r} must hold integers, got dtype {counts.dtype}")
        try:
            rows = zip(sigmas.tolist(), rates.tolist(), counts.tolist(), strict=True)
            return cls(tuple((float(sigma), float(rate), int(count)) for sigma, rate, count in rows))
        except InvalidConfigError as error:
            raise InvalidStateError(f"malformed DP ledger: {error}") from None


@dataclass(frozen=True)
class BudgetCheck:
    """Whether one more version fits ``epsilon_budget``: what is spent and what the next version would make it."""

    budget: float
    spent: float
    next_epsilon: float
    version: int | None
    """The last version made (the one ``spent`` counts up to), if known."""

    @property
    def allows_next(self) -> bool:
        """True when the next version keeps epsilon within the budget."""
        return self.next_epsilon <= self.budget

    def describe(self) -> str:
        """One sentence for logs, status files and MLflow tags."""
        after = "" if self.version is None else f" after version {self.version}"
        if self.allows_next:
            return (
                f"epsilon {self.spent:.4g} spent{after}; the next version makes it {self.next_epsilon:.4g} "
                f"of dp_epsilon_budget {self.budget:g}"
            )
        return (
            f"privacy budget exhausted: epsilon {self.spent:.4g} spent{after}; the next version would reach "
            f"{self.next_epsilon:.4g} > dp_epsilon_budget {self.budget:g}, so no further version is made"
        )


def gaussian_noise(
    like: WeightsLike,
    stddev: float,
    seed: int,
    version: int,
    *,
    streams: NoiseStreams = "shard",
    shard: Shard | None = None,
) -> Tensors:
    """Seeded ``N(0, stddev^2)`` noise shaped like ``like``; the same on any machine (numpy's PCG64 streams).

    ``streams="shard"``: one stream per shard (:mod:`aggregator.shards`), seeded by ``(seed, version, the
    tensor's position among the sorted names, the shard's index)``, so one shard's noise is drawn without the
    rest; ``like`` is the whole model, or with ``shard`` that shard's one-tensor model. ``"model"``: one
    stream through every parameter in name order (versions recorded before shard streams).
    """
    check_non_negative("noise stddev", stddev)
    check_int("seed", seed, minimum=0)
    check_int("version", version, minimum=0)
    if streams == "model":
        if shard is not None:
            raise InvalidConfigError("noise drawn in one stream per model cannot be drawn for one shard")
        generator = np.random.default_rng([seed, version, 0])
        noise: Tensors = {}
        for key in sorted(like):
            noise[key] = (generator.standard_normal(like[key].shape) * stddev).astype(np.float32)
        return {key: noise[key] for key in like}
    if shard is not None:
        if set(like) != {shard.tensor} or like[shard.tensor].size != shard.size:
            raise ShapeMismatchError(
                f"noise for shard {shard.ordinal} needs {{{shard.tensor!r}: {shard.size} values}}, got {sorted(like)}"
            )
        shape = like[shard.tensor].shape
        return {shard.tensor: _shard_noise(shape, stddev, seed, version, shard.tensor_position, shard.index)}
    result: Tensors = {}
    for position, key in enumerate(sorted(like)):
        shape = like[key].shape
        pieces = [
            _shard_noise((stop - start,), stddev, seed, version, position, index)
            for index, (start, stop) in enumerate(shard_bounds(math.prod(shape)))
        ]
        result[key] = np.concatenate(pieces).reshape(shape)
    return {key: result[key] for key in like}


def _shard_noise(
    shape: tuple[int, ...], stddev: float, seed: int, version: int, tensor_position: int, index: int
) -> npt.NDArray[np.float32]:
    generator = np.random.default_rng([seed, version, 0, tensor_position, index])
    return (generator.standard_normal(shape) * stddev).astype(np.float32)


def epsilon_after(noise_multiplier: float, sampling_rate: float, versions: int, delta: float) -> float:
    """``epsilon`` of ``versions`` compositions of the Gaussian mechanism, Poisson-subsampled at ``q < 1`` (RDP)."""
    check_positive("noise_multiplier", noise_multiplier)
    check_positive("sampling_rate", sampling_rate)
    if sampling_rate > 1:
        raise InvalidConfigError(f"sampling_rate must be <= 1, got {sampling_rate!r}")
    check_int("versions", versions, minimum=0)
    check_positive("delta", delta)
    if versions == 0:
        return 0.0
    return _ledger_epsilon(((float(noise_multiplier), float(sampling_rate), versions),), float(delta))


@lru_cache(maxsize=4096)
def _ledger_epsilon(entries: tuple[tuple[float, float, int], ...], delta: float) -> float:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant()
    for noise_multiplier, sampling_rate, versions in entries:
        event: Any = dp_accounting.GaussianDpEvent(noise_multiplier)
        if sampling_rate < 1:
            event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
        accountant.compose(event, versions)
    return float(accountant.get_epsilon(delta))


class PrivateServerOptimizer(ServerOptimizer):
    """A server optimizer behind the Gaussian mechanism; keeps the (adaptive) clip norm as its state.

    Its ``step`` refuses to run (a step without noise would silently void the guarantee): the FedBuff
    step calls :meth:`private_step` with the clipped weighted sum. Every private step adds its mechanism to
    a :class:`PrivacyLedger`. ``state_dict`` is the inner optimizer's state plus ``dp/clip_norm``,
    ``dp/version`` and the ledger; a state without them (DP switched on later) starts at the configured clip
    norm, an unknown version and an empty ledger.
    """

    def __init__(self, inner: ServerOptimizer, policy: PrivacyPolicy, buffer_size: int) -> None:
        if isinstance(inner, PrivateServerOptimizer):
            raise InvalidConfigError("a PrivateServerOptimizer cannot wrap another one")
        if policy.seed is None:
            raise InvalidConfigError(
                "differential privacy needs a dp_seed; a driver draws a secret one when it starts "
                "(AggregationConfig.with_secret_dp_seed)"
            )
        super().__init__(inner.learning_rate)
        self.inner = inner
        self.policy = policy
        self.seed: int = policy.seed
        self.buffer_size = check_int("buffer_size", buffer_size, minimum=1)
        self._clip_norm = policy.clip_norm
        self._version: int | None = 0
        self._ledger = PrivacyLedger()

    @property
    def name(self) -> str:
        """The inner optimizer's name."""
        return self.inner.name

    @property
    def slot_names(self) -> tuple[str, ...]:
        """The inner optimizer's slots."""
        return self.inner.slot_names

    @property
    def step_count(self) -> int:
        """The inner optimizer's step count."""
        return self.inner.step_count

    @property
    def clip_norm(self) -> float:
        """The clip norm the next version uses."""
        return self._clip_norm

    @property
    def version(self) -> int | None:
        """The version this state belongs to (the last one made), if known."""
        return self._version

    @property
    def ledger(self) -> PrivacyLedger:
        """The mechanisms of every private version made so far."""
        return self._ledger

    def epsilon_spent(self) -> float:
        """``epsilon`` of the versions made so far, for the policy's ``delta``."""
        return self._ledger.epsilon(self.policy.delta)

    def epsilon_after_next(self) -> float:
        """``epsilon`` once the next version (under the current policy) is made too."""
        return self._ledger.add(self.policy.noise_multiplier, self.policy.sampling_rate(self.buffer_size)).epsilon(
            self.policy.delta
        )

    def budget_check(self) -> BudgetCheck | None:
        """Whether the next version fits ``epsilon_budget``; ``None`` when the policy sets no budget."""
        if self.policy.epsilon_budget is None:
            return None
        return BudgetCheck(
            budget=self.policy.epsilon_budget,
            spent=self.epsilon_spent(),
            next_epsilon=self.epsilon_after_next(),
            version=self._version,
        )

    def _update(
        self, param: Float64Array, gradient: Float64Array, slots: dict[str, Float64Array]
    ) -> tuple[Float64Array, dict[str, Float64Array]]:
        return self.inner._update(param, gradient, slots)

    def step(self, params: Tensors, aggregated_delta: Tensors) -> Tensors:
        """Refuse: a noiseless step under DP would break the guarantee; use ``private_step``."""
        raise InvalidConfigError(
            "differential privacy is on: the server step must go through private_step (clip, noise), not step"
        )

    def private_step(
        self,
        params: Tensors,
        clipped_weighted_sum: Tensors,
        *,
        update_count: int,
        version: int,
        unclipped_count: int,
        shard: Shard | None = None,
    ) -> Tensors:
        """Add ``N(0, (sigma_delta * C / n)^2)`` noise to the clipped weighted sum, step, adapt ``C``, account.

        ``version``: the version being made (seeds the noise). ``unclipped_count``: updates whose norm was
        at most ``C`` before clipping (adaptive clipping's signal). ``shard``: the one shard ``params`` holds
        (``None``: the whole model). The budget is the caller's to check (:meth:`budget_check`) before it
        decides to make a version.
        """
        check_int("update_count", update_count, minimum=1)
        check_int("unclipped_count", unclipped_count, minimum=0)
        if unclipped_count > update_count:
            raise InvalidConfigError(f"unclipped_count {unclipped_count} exceeds update_count {update_count}")
        sampling_rate = self.policy.sampling_rate(
            self.buffer_size
        )  # raises before the step when it cannot be accounted
        stddev = self.policy.delta_noise_multiplier * self._clip_norm / update_count
        noise = gaussian_noise(
            clipped_weighted_sum, stddev, self.seed, version, streams=self.policy.noise_streams, shard=shard
        )
        noisy = add(clipped_weighted_sum, noise)
        new_params = self.inner.step(params, noisy)
        if self.policy.adaptive_clipping:
            self._clip_norm = self._next_clip_norm(update_count, unclipped_count, version)
        self._version = version
        self._ledger = self._ledger.add(self.policy.noise_multiplier, sampling_rate)
        return new_params

    def _next_clip_norm(self, update_count: int, unclipped_count: int, version: int) -> float:
        generator = np.random.default_rng([self.seed, version, 1])
        noise = float(generator.standard_normal()) * self.policy.count_noise_multiplier
        fraction = (unclipped_count - update_count / 2 + noise) / update_count + 0.5
        return self._clip_norm * math.exp(-self.policy.clip_learning_rate * (fraction - self.policy.target_quantile))

    def state_dict(self) -> dict[str, npt.NDArray[Any]]:
        """The inner state plus ``dp/clip_norm``, (if known) ``dp/version`` and (if any) the ledger."""
        state = self.inner.state_dict()
        state[CLIP_NORM_KEY] = np.array(self._clip_norm, dtype=np.float64)
        if self._version is not None:
            state[VERSION_KEY] = np.array(self._version, dtype=np.int64)
        state.update(self._ledger.state_dict())
        return state

    def load_state_dict(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore the inner state and the DP entries (absent ones: configured clip, unknown version).

        A state written before the ledger existed (``dp/version`` but no ledger) is read as that many
        versions at the configured sigma without amplification: the conservative reading of its history.
        """
        inner_state = {key: value for key, value in state.items() if not key.startswith("dp/")}
        known = {CLIP_NORM_KEY, VERSION_KEY, *_LEDGER_KEYS}
        unknown = sorted(set(state) - set(inner_state) - known)
        if unknown:
            raise InvalidStateError(f"unexpected DP state keys {unknown}; expected {sorted(known)}")
        clip_norm = self.policy.clip_norm
        if CLIP_NORM_KEY in state:
            clip_array = np.asarray(state[CLIP_NORM_KEY])
            if clip_array.shape != () or not np.issubdtype(clip_array.dtype, np.floating):
                raise InvalidStateError(f"{CLIP_NORM_KEY!r} must be a float scalar, got {clip_array!r}")
            clip_norm = float(clip_array)
            if not (math.isfinite(clip_norm) and clip_norm > 0):
                raise InvalidStateError(f"{CLIP_NORM_KEY!r} must be finite and > 0, got {clip_norm}")
        version: int | None = None
        if VERSION_KEY in state:
            version_array = np.asarray(state[VERSION_KEY])
            if version_array.shape != () or not np.issubdtype(version_array.dtype, np.integer):
                raise InvalidStateError(f"{VERSION_KEY!r} must be an integer scalar, got {version_array!r}")
            version = int(version_array)
        ledger = PrivacyLedger.from_state(state)
        if not ledger.entries and version:
            ledger = PrivacyLedger().add(self.policy.noise_multiplier, 1.0, version)
        self.inner.load_state_dict(inner_state)
        self._clip_norm = clip_norm
        self._version = version
        self._ledger = ledger
