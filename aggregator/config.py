"""The aggregation configuration the streaming job runs with and records on every model version."""

import dataclasses
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

from aggregator._checks import check_fraction, check_int
from aggregator.buffer import BufferPolicy
from aggregator.errors import InvalidConfigError
from aggregator.privacy import DpParticipation, PrivacyPolicy, PrivateServerOptimizer
from aggregator.robust import RobustPolicy, RobustRule
from aggregator.server_optimizers import SERVER_OPTIMIZERS, ServerOptimizer, make_server_optimizer
from aggregator.staleness import StalenessFunctionName, StalenessPolicy
from aggregator.strategies.registry import strategy_class, strategy_names

JsonScalar = str | int | float | bool | None

_OPTIONAL_FIELDS: Final = (
    "robust_aggregation",
    "trim_fraction",
    "krum_byzantine",
    "multi_krum_selected",
    "max_update_norm",
    "dp_noise_multiplier",
    "dp_clip_norm",
    "dp_adaptive_clipping",
    "dp_target_quantile",
    "dp_clip_learning_rate",
    "dp_clip_count_noise_multiplier",
    "dp_population",
    "dp_delta",
    "dp_seed",
    "dp_participation",
    "dp_epsilon_budget",
)
"""Robustness and DP fields: ``to_dict`` writes them only when they differ from their defaults."""

_FLOAT_FIELDS: Final = frozenset(
    {
        "max_wait_seconds",
        "staleness_exponent",
        "hinge_a",
        "server_learning_rate",
        "server_momentum",
        "server_beta1",
        "server_beta2",
        "server_tau",
        "mixing",
        "trim_fraction",
        "max_update_norm",
        "dp_noise_multiplier",
        "dp_clip_norm",
        "dp_delta",
        "dp_target_quantile",
        "dp_clip_learning_rate",
        "dp_clip_count_noise_multiplier",
        "dp_epsilon_budget",
    }
)


@dataclass(frozen=True)
class AggregationConfig:
    """Everything that decides how updates become a new global version; validated on construction.

    ``mode`` names a registered strategy (:mod:`aggregator.strategies`; ``from_dict`` also takes the key
    ``strategy``), which checks the fields it depends on. Built in:
    ``fedbuff``: buffer of ``buffer_size`` staleness-weighted updates, then a server-optimizer step.
    ``fedasync``: each update on its own (``buffer_size`` must be 1), mixed in with ``mixing * f(s)``.
    ``fedavg``: synchronous rounds, plain averaging (server optimizer must be ``sgd`` with learning rate 1;
    use ``fedbuff`` with ``max_staleness=0`` for synchronous rounds with another server optimizer).

    Robustness (strategies that accept a robust combiner; see :mod:`aggregator.robust`): ``robust_aggregation``
    picks the rule, ``trim_fraction``, ``krum_byzantine`` and ``multi_krum_selected`` its parameters,
    ``max_update_norm`` clips every delta to that L2 norm. Differential privacy (strategies that accept it; see
    :mod:`aggregator.privacy`) is on when ``dp_noise_multiplier`` is set; it needs
    ``robust_aggregation="none"`` and ``weight_by_sample_count=False``, and takes at most one update per
    client into a version (:attr:`bounds_contributions`). ``dp_participation`` says what epsilon may assume:
    ``"arbitrary"`` (no sampling amplification) or ``"random_check_in"`` (Poisson subsampling at
    ``q = buffer_size / dp_population``; the population can be left for the driver to derive, see
    :meth:`with_enrolled_population`). ``dp_epsilon_budget`` stops versions before epsilon passes it. Leave
    ``dp_seed`` unset outside tests and simulations: the job draws a secret one when it starts
    (:meth:`with_secret_dp_seed`). Every new option defaults to off.
    """

    mode: str = "fedbuff"
    buffer_size: int = 10
    max_wait_seconds: float | None = 60.0
    staleness_function: StalenessFunctionName = "polynomial"
    staleness_exponent: float = 0.5
    hinge_a: float = 10.0
    hinge_b: int = 4
    max_staleness: int | None = 20
    weight_by_sample_count: bool = True
    server_optimizer: str = "sgd"
    server_learning_rate: float = 1.0
    server_momentum: float = 0.0
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3
    mixing: float = 0.5
    robust_aggregation: RobustRule = "none"
    trim_fraction: float = 0.1
    krum_byzantine: int = 1
    multi_krum_selected: int | None = None
    max_update_norm: float | None = None
    dp_noise_multiplier: float | None = None
    dp_clip_norm: float = 1.0
    dp_adaptive_clipping: bool = False
    dp_target_quantile: float = 0.5
    dp_clip_learning_rate: float = 0.2
    dp_clip_count_noise_multiplier: float | None = None
    dp_population: int | None = None
    dp_delta: float = 1e-5
    dp_seed: int | None = None
    dp_participation: DpParticipation = "arbitrary"
    dp_epsilon_budget: float | None = None

    def __post_init__(self) -> None:
        """Validate on construction, so a config that exists can always be run (DP needs a seed first)."""
        self.validate()

    def with_secret_dp_seed(self) -> "AggregationConfig":
        """The config with a secret ``dp_seed`` drawn from the operating system, when DP is on and none is set.

        Anyone who knows the seed can regenerate the noise and subtract it from a published version, so a fixed
        or default seed would void the guarantee. Drivers call this once when they start (the job in
        ``streaming_jobs.job.run_job``); the seed is part of :meth:`to_dict`, hence of each version's recorded
        ``config_json``, which is how an audit regenerates the noise. Other configs are returned as they are.
        """
        if self.dp_noise_multiplier is None or self.dp_seed is not None:
            return self
        return dataclasses.replace(self, dp_seed=secrets.randbits(63))

    def validate(self) -> None:
        """Raise ``InvalidConfigError`` naming the first field that is out of range or inconsistent."""
        strategy = strategy_class(self.mode)
        if not isinstance(self.weight_by_sample_count, bool):
            raise InvalidConfigError(f"weight_by_sample_count must be a bool, got {self.weight_by_sample_count!r}")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise InvalidConfigError(
                f"server_optimizer must be one of {list(SERVER_OPTIMIZERS)}, got {self.server_optimizer!r}"
            )
        self.staleness_policy()
        self.buffer_policy()
        self._make_inner_optimizer()
        check_fraction("mixing", self.mixing)
        strategy.check_config(self)
        robust = self.robust_policy()
        if not robust.is_default and not strategy.accepts_robust_aggregation:
            raise InvalidConfigError(
                f"robust aggregation ({self.robust_aggregation!r}, max_update_norm {self.max_update_norm!r}) "
                f"runs in mode {_modes_accepting('accepts_robust_aggregation')} only, got mode {self.mode!r}"
            )
        self._validate_privacy()

    def _validate_privacy(self) -> None:
        if self.dp_noise_multiplier is None:
            if self.dp_epsilon_budget is not None or self.dp_participation != "arbitrary":
                raise InvalidConfigError(
                    f"dp_epsilon_budget ({self.dp_epsilon_budget!r}) and dp_participation "
                    f"({self.dp_participation!r}) need differential privacy on (dp_noise_multiplier), got None"
                )
            return
        if not strategy_class(self.mode).accepts_privacy:
            raise InvalidConfigError(
                f"differential privacy runs in mode {_modes_accepting('accepts_privacy')} only, got mode {self.mode!r}"
            )
        if self.robust_aggregation != "none":
            raise InvalidConfigError(
                "differential privacy bounds one client's influence on a weighted sum; "
                f"robust_aggregation {self.robust_aggregation!r} has no such bound, so it must be 'none'"
            )
        if self.weight_by_sample_count:
            raise InvalidConfigError(
                "differential privacy needs weight_by_sample_count=False: client-reported sample counts "
                "would give one client an unbounded share of the average"
            )
        self._privacy_policy(0 if self.dp_seed is None else self.dp_seed)

    @property
    def bounds_contributions(self) -> bool:
        """Whether a version takes at most one update per client: whenever DP is on (its sensitivity needs it).

        Without DP a fast client may have several updates in one buffer, as in FedBuff.
        """
        return self.dp_noise_multiplier is not None

    def with_enrolled_population(self, enrolled: int | None) -> "AggregationConfig":
        """The config with the population a sampling claim rests on, given the clients able to contribute.

        Only ``dp_participation="random_check_in"`` uses a population (``q = buffer_size / population``):
        without ``dp_population`` it becomes ``enrolled``, the clients who can sign an update (``None``:
        unknown, which is refused); a ``dp_population`` above ``enrolled`` is refused, since only enrolled
        clients contribute and the claimed ``q`` would understate the real one. Other configs are returned
        as they are.
        """
        if self.dp_noise_multiplier is None or self.dp_participation != "random_check_in":
            return self
        if enrolled is not None:
            check_int("enrolled clients", enrolled, minimum=0)
        if self.dp_population is None:
            if not enrolled:
                raise InvalidConfigError(
                    "dp_participation 'random_check_in' needs dp_population and none can be derived "
                    f"(enrolled clients: {enrolled!r}); set dp_population or enrol the clients"
                )
            return dataclasses.replace(self, dp_population=enrolled)
        if enrolled is not None and self.dp_population > enrolled:
            raise InvalidConfigError(
                f"dp_population ({self.dp_population}) exceeds the {enrolled} enrolled, unrevoked clients: only they "
                f"can contribute, so q = {self.buffer_size}/{self.dp_population} would understate the sampling rate"
            )
        return self

    def staleness_policy(self) -> StalenessPolicy:
        """Return the staleness policy these fields describe."""
        return StalenessPolicy(
            function=self.staleness_function,
            exponent=self.staleness_exponent,
            hinge_a=self.hinge_a,
            hinge_b=self.hinge_b,
            max_staleness=self.max_staleness,
        )

    def buffer_policy(self) -> BufferPolicy:
        """Return the buffer policy these fields describe."""
        return BufferPolicy(buffer_size=self.buffer_size, max_wait_seconds=self.max_wait_seconds)

    def robust_policy(self) -> RobustPolicy:
        """Return the robust-aggregation policy these fields describe (``rule="none"``: plain average)."""
        return RobustPolicy(
            rule=self.robust_aggregation,
            trim_fraction=self.trim_fraction,
            krum_byzantine=self.krum_byzantine,
            multi_krum_selected=self.multi_krum_selected,
            max_update_norm=self.max_update_norm,
        )

    def privacy_policy(self) -> PrivacyPolicy | None:
        """Return the DP policy, or ``None`` when ``dp_noise_multiplier`` is unset (DP off).

        Raises ``InvalidConfigError`` while DP has no ``dp_seed``: draw one with :meth:`with_secret_dp_seed`.
        """
        if self.dp_noise_multiplier is None:
            return None
        if self.dp_seed is None:
            raise InvalidConfigError(
                "differential privacy needs a dp_seed; a driver draws a secret one when it starts "
                "(AggregationConfig.with_secret_dp_seed)"
            )
        return self._privacy_policy(self.dp_seed)

    def _privacy_policy(self, seed: int) -> PrivacyPolicy:
        if self.dp_noise_multiplier is None:
            raise InvalidConfigError("differential privacy is off (dp_noise_multiplier is None)")
        return PrivacyPolicy(
            noise_multiplier=self.dp_noise_multiplier,
            clip_norm=self.dp_clip_norm,
            population=self.dp_population,
            buffer_size=self.buffer_size,
            delta=self.dp_delta,
            adaptive_clipping=self.dp_adaptive_clipping,
            target_quantile=self.dp_target_quantile,
            clip_learning_rate=self.dp_clip_learning_rate,
            clip_count_noise_multiplier=self.dp_clip_count_noise_multiplier,
            seed=seed,
            participation=self.dp_participation,
            epsilon_budget=self.dp_epsilon_budget,
        )

    def make_optimizer(self) -> ServerOptimizer:
        """Return a fresh server optimizer with these hyperparameters (its state is not config).

        With DP on it is wrapped in a :class:`PrivateServerOptimizer`, whose state also carries the clip norm.
        """
        privacy = self.privacy_policy()
        inner = self._make_inner_optimizer()
        return inner if privacy is None else PrivateServerOptimizer(inner, privacy)

    def _make_inner_optimizer(self) -> ServerOptimizer:
        name = self.server_optimizer
        kwargs: dict[str, float]
        if name in ("sgd", "momentum"):
            kwargs = {"momentum": self.server_momentum}
        elif name == "adagrad":
            kwargs = {"tau": self.server_tau}
        else:
            kwargs = {"beta1": self.server_beta1, "beta2": self.server_beta2, "tau": self.server_tau}
        return make_server_optimizer(name, self.server_learning_rate, **kwargs)

    def to_dict(self) -> dict[str, JsonScalar]:
        """Return the fields as JSON-safe scalars (floats as floats), in declaration order.

        Robustness and DP fields appear only when they differ from their defaults, so the recorded
        ``config_json`` of a job that does not use them is what it was before they existed.
        """
        values: dict[str, JsonScalar] = asdict(self)
        defaults = AggregationConfig.__dataclass_fields__
        for name in _OPTIONAL_FIELDS:
            if values[name] == defaults[name].default:
                del values[name]
        for name in _FLOAT_FIELDS & set(values):
            value = values[name]
            if value is not None and not isinstance(value, str):
                values[name] = float(value)
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AggregationConfig":
        """Build a config from ``to_dict`` output; missing keys take defaults, unknown keys are an error.

        ``strategy`` is another name for ``mode`` (``{"strategy": "fednova"}``); giving both, they must agree.
        """
        kwargs = dict(data)
        if "strategy" in kwargs:
            strategy = kwargs.pop("strategy")
            if "mode" in kwargs and kwargs["mode"] != strategy:
                raise InvalidConfigError(
                    f"strategy {strategy!r} and mode {kwargs['mode']!r} disagree; give one of them"
                )
            kwargs["mode"] = strategy
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InvalidConfigError(f"unknown aggregation config keys {unknown}; known keys are {sorted(known)}")
        for name in _FLOAT_FIELDS & set(kwargs):
            value = kwargs[name]
            if isinstance(value, int) and not isinstance(value, bool):
                kwargs[name] = float(value)
        return cls(**kwargs)


def _modes_accepting(capability: str) -> str:
    """``'fedbuff'`` or ``'fedbuff' or 'other'``: the registered strategies with ``capability`` set."""
    names = [name for name in strategy_names() if getattr(strategy_class(name), capability)]
    return " or ".join(repr(name) for name in names) or "(none)"
