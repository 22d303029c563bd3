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

The accountant treats each version as a Poisson-subsampled Gaussian mechanism with sampling rate
``q = buffer_size / population`` and noise multiplier ``sigma``, composes it over versions in Rényi DP
and converts to ``(epsilon, delta)`` with Google's ``dp-accounting``. An asynchronous buffer is not a
Poisson sample, so the figure is the standard approximation, as in DP-FedAvg practice; one client that
contributes to several versions is covered, as each version is accounted separately.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from aggregator._checks import check_int, check_non_negative, check_positive
from aggregator.errors import InvalidConfigError, InvalidStateError
from aggregator.server_optimizers import Float64Array, ServerOptimizer
from aggregator.weights import ModelWeights, WeightsLike, add

CLIP_NORM_KEY: Final = "dp/clip_norm"
"""State key of the clip norm in force for the next version (0-d float64)."""
VERSION_KEY: Final = "dp/version"
"""State key of the version this state belongs to (0-d int64)."""

__all__ = [
    "CLIP_NORM_KEY",
    "VERSION_KEY",
    "PrivacyPolicy",
    "PrivateServerOptimizer",
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
    ``seed``: with the version number, seeds the noise. ``population``: clients that may take part.
    ``delta``: the ``delta`` of the reported ``(epsilon, delta)``. ``buffer_size``: updates per version.
    """

    noise_multiplier: float
    clip_norm: float
    population: int
    buffer_size: int
    delta: float = 1e-5
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clip_count_noise_multiplier: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject values that make the mechanism or the accountant meaningless, naming them."""
        check_positive("dp_noise_multiplier", self.noise_multiplier)
        check_positive("dp_clip_norm", self.clip_norm)
        check_int("dp_population", self.population, minimum=1)
        check_int("buffer_size", self.buffer_size, minimum=1)
        if self.buffer_size > self.population:
            raise InvalidConfigError(
                f"dp_population ({self.population}) must be at least buffer_size ({self.buffer_size})"
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
        check_int("dp_seed", self.seed, minimum=0)
        if self.adaptive_clipping and 2 * self.count_noise_multiplier <= self.noise_multiplier:
            raise InvalidConfigError(
                f"dp_clip_count_noise_multiplier ({self.count_noise_multiplier}) must exceed half of "
                f"dp_noise_multiplier ({self.noise_multiplier}) for adaptive clipping to fit its budget"
            )

    @property
    def sampling_rate(self) -> float:
        """``q = buffer_size / population``."""
        return self.buffer_size / self.population

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

    def epsilon(self, versions: int) -> float:
        """``epsilon`` after ``versions`` versions, for ``delta`` (see :func:`epsilon_after`)."""
        return epsilon_after(self.noise_multiplier, self.sampling_rate, versions, self.delta)


def gaussian_noise(like: WeightsLike, stddev: float, seed: int, version: int) -> ModelWeights:
    """Seeded ``N(0, stddev^2)`` noise shaped like ``like``: drawn per parameter in name order.

    The same ``(seed, version)`` gives the same noise on any machine (numpy's PCG64 stream).
    """
    check_non_negative("noise stddev", stddev)
    check_int("seed", seed, minimum=0)
    check_int("version", version, minimum=0)
    generator = np.random.default_rng([seed, version, 0])
    noise: ModelWeights = {}
    for key in sorted(like):
        noise[key] = (generator.standard_normal(like[key].shape) * stddev).astype(np.float32)
    return {key: noise[key] for key in like}


def epsilon_after(noise_multiplier: float, sampling_rate: float, versions: int, delta: float) -> float:
    """``epsilon`` of ``versions`` compositions of the Poisson-subsampled Gaussian mechanism (RDP accountant)."""
    check_positive("noise_multiplier", noise_multiplier)
    check_positive("sampling_rate", sampling_rate)
    if sampling_rate > 1:
        raise InvalidConfigError(f"sampling_rate must be <= 1, got {sampling_rate!r}")
    check_int("versions", versions, minimum=0)
    check_positive("delta", delta)
    if versions == 0:
        return 0.0
    return _epsilon(float(noise_multiplier), float(sampling_rate), versions, float(delta))


@lru_cache(maxsize=4096)
def _epsilon(noise_multiplier: float, sampling_rate: float, versions: int, delta: float) -> float:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant.compose(event, versions)
    return float(accountant.get_epsilon(delta))


class PrivateServerOptimizer(ServerOptimizer):
    """A server optimizer behind the Gaussian mechanism; keeps the (adaptive) clip norm as its state.

    Its ``step`` refuses to run (a step without noise would silently void the guarantee): the FedBuff
    step calls :meth:`private_step` with the clipped weighted sum. ``state_dict`` is the inner optimizer's
    state plus ``dp/clip_norm`` and ``dp/version``; a state without them (DP switched on later) starts
    at the configured clip norm and an unknown version.
    """

    def __init__(self, inner: ServerOptimizer, policy: PrivacyPolicy) -> None:
        if isinstance(inner, PrivateServerOptimizer):
            raise InvalidConfigError("a PrivateServerOptimizer cannot wrap another one")
        super().__init__(inner.learning_rate)
        self.inner = inner
        self.policy = policy
        self._clip_norm = policy.clip_norm
        self._version: int | None = 0

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

    def _update(
        self, param: Float64Array, gradient: Float64Array, slots: dict[str, Float64Array]
    ) -> tuple[Float64Array, dict[str, Float64Array]]:
        return self.inner._update(param, gradient, slots)

    def step(self, params: ModelWeights, aggregated_delta: ModelWeights) -> ModelWeights:
        """Refuse: a noiseless step under DP would break the guarantee; use ``private_step``."""
        raise InvalidConfigError(
            "differential privacy is on: the server step must go through private_step (clip, noise), not step"
        )

    def private_step(
        self,
        params: ModelWeights,
        clipped_weighted_sum: ModelWeights,
        *,
        update_count: int,
        version: int,
        unclipped_count: int,
    ) -> ModelWeights:
        """Add ``N(0, (sigma_delta * C / n)^2)`` noise to the clipped weighted sum, step, adapt ``C``.

        ``version``: the version being made (seeds the noise). ``unclipped_count``: updates whose norm was
        at most ``C`` before clipping (adaptive clipping's signal).
        """
        check_int("update_count", update_count, minimum=1)
        check_int("unclipped_count", unclipped_count, minimum=0)
        if unclipped_count > update_count:
            raise InvalidConfigError(f"unclipped_count {unclipped_count} exceeds update_count {update_count}")
        stddev = self.policy.delta_noise_multiplier * self._clip_norm / update_count
        noisy = add(clipped_weighted_sum, gaussian_noise(clipped_weighted_sum, stddev, self.policy.seed, version))
        new_params = self.inner.step(params, noisy)
        if self.policy.adaptive_clipping:
            self._clip_norm = self._next_clip_norm(update_count, unclipped_count, version)
        self._version = version
        return new_params

    def _next_clip_norm(self, update_count: int, unclipped_count: int, version: int) -> float:
        generator = np.random.default_rng([self.policy.seed, version, 1])
        noise = float(generator.standard_normal()) * self.policy.count_noise_multiplier
        fraction = (unclipped_count - update_count / 2 + noise) / update_count + 0.5
        return self._clip_norm * math.exp(-self.policy.clip_learning_rate * (fraction - self.policy.target_quantile))

    def state_dict(self) -> dict[str, npt.NDArray[Any]]:
        """The inner state plus ``dp/clip_norm`` and (if known) ``dp/version``."""
        state = self.inner.state_dict()
        state[CLIP_NORM_KEY] = np.array(self._clip_norm, dtype=np.float64)
        if self._version is not None:
            state[VERSION_KEY] = np.array(self._version, dtype=np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore the inner state and the DP entries (absent ones: configured clip, unknown version)."""
        inner_state = {key: value for key, value in state.items() if not key.startswith("dp/")}
        unknown = sorted(set(state) - set(inner_state) - {CLIP_NORM_KEY, VERSION_KEY})
        if unknown:
            raise InvalidStateError(f"unexpected DP state keys {unknown}; expected {[CLIP_NORM_KEY, VERSION_KEY]}")
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
        self.inner.load_state_dict(inner_state)
        self._clip_norm = clip_norm
        self._version = version
