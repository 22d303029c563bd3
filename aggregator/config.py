"""The aggregation configuration the streaming job runs with and records on every model version.

A configuration is a strategy's name plus the policies that already exist on their own, each validated by
itself: the buffer (:class:`BufferPolicy`), staleness (:class:`StalenessPolicy`), the server optimizer
(:class:`ServerOptimizerSettings`), robustness (:class:`RobustPolicy`) and differential privacy
(:class:`PrivacyPolicy`). The configuration checks only what spans them, and asks the strategy what it
accepts. Its JSON form (what an operator writes in ``--aggregation`` and what every version records in
``config_json``) is one flat object whose keys each policy declares in its ``JSON_KEYS``.
"""

import dataclasses
import secrets
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, TypeVar, Union, get_args, get_origin, get_type_hints

from aggregator._checks import check_fraction, check_int
from aggregator.buffer import BufferPolicy
from aggregator.errors import InvalidConfigError
from aggregator.privacy import PrivacyPolicy, PrivateServerOptimizer
from aggregator.robust import RobustPolicy
from aggregator.server_optimizers import ServerOptimizer, ServerOptimizerSettings
from aggregator.staleness import StalenessPolicy
from aggregator.strategies.registry import strategy_class, strategy_names

JsonScalar = str | int | float | bool | None


class _Section(Protocol):
    """A policy that is one part of the configuration: a frozen dataclass naming its JSON keys."""

    JSON_KEYS: ClassVar[Mapping[str, str]]
    __dataclass_fields__: ClassVar[dict[str, Any]]


SectionT = TypeVar("SectionT", bound=_Section)

DEFAULT_BUFFER: Final = BufferPolicy(buffer_size=10, max_wait_seconds=60.0)
DEFAULT_STALENESS: Final = StalenessPolicy("polynomial", exponent=0.5, max_staleness=20)
DEFAULT_OPTIMIZER: Final = ServerOptimizerSettings()
NO_ROBUST_RULE: Final = RobustPolicy()


@dataclass(frozen=True)
class AggregationConfig:
    """Everything that decides how updates become a new global version; validated on construction.

    ``strategy`` names a registered strategy (:mod:`aggregator.strategies`), which checks what it needs
    (:meth:`aggregator.strategies.base.Strategy.check_config`) and declares whether it accepts a robust
    combiner and differential privacy. ``weight_by_sample_count`` weighs updates by their client-reported
    sample counts; ``mixing`` is FedAsync's ``alpha``. ``robust`` left at its default changes nothing;
    ``privacy`` is ``None`` with DP off. With DP on, every version takes at most one update per client
    (:attr:`bounds_contributions`) and the strategy must weigh without sample counts and without a robust
    rule. Leave the DP seed unset outside tests and simulations: drivers draw a secret one when they start
    (:meth:`with_secret_dp_seed`). ``cohort_fraction`` (synchronous strategies only; ``None``: every client)
    lets each version open a round in which only the clients :func:`schemas.cohorts.in_cohort` draws may train.
    """

    strategy: str = "fedbuff"
    buffer: BufferPolicy = DEFAULT_BUFFER
    staleness: StalenessPolicy = DEFAULT_STALENESS
    weight_by_sample_count: bool = True
    optimizer: ServerOptimizerSettings = DEFAULT_OPTIMIZER
    mixing: float = 0.5
    robust: RobustPolicy = NO_ROBUST_RULE
    privacy: PrivacyPolicy | None = None
    cohort_fraction: float | None = None

    def __post_init__(self) -> None:
        """Validate what spans the policies (each policy validated itself when it was built)."""
        strategy = strategy_class(self.strategy)
        if not isinstance(self.weight_by_sample_count, bool):
            raise InvalidConfigError(f"weight_by_sample_count must be a bool, got {self.weight_by_sample_count!r}")
        check_fraction("mixing", self.mixing)
        if self.cohort_fraction is not None:
            self._check_cohort(self.cohort_fraction)
        strategy.check_config(self)
        if not self.robust.is_default and not strategy.accepts_robust_aggregation:
            raise InvalidConfigError(
                f"robust aggregation ({self.robust.rule!r}, max_update_norm {self.robust.max_update_norm!r}) "
                f"runs in mode {_strategies_accepting('accepts_robust_aggregation')} only, got mode {self.strategy!r}"
            )
        if self.privacy is not None:
            self._check_privacy(self.privacy)

    def _check_cohort(self, fraction: float) -> None:
        if not strategy_class(self.strategy).synchronous:
            raise InvalidConfigError(
                f"cohort_fraction draws the clients of a synchronous round, so it needs mode "
                f"{_strategies_accepting('synchronous')}, got mode {self.strategy!r}"
            )
        if isinstance(fraction, bool) or not isinstance(fraction, float) or not 0 < fraction <= 1:
            raise InvalidConfigError(f"cohort_fraction must be a float in (0, 1], got {fraction!r}")

    def _check_privacy(self, privacy: PrivacyPolicy) -> None:
        if not strategy_class(self.strategy).accepts_privacy:
            raise InvalidConfigError(
                f"differential privacy runs in mode {_strategies_accepting('accepts_privacy')} only, "
                f"got mode {self.strategy!r}"
            )
        if self.robust.rule != "none":
            raise InvalidConfigError(
                "differential privacy bounds one client's influence on a weighted sum; "
                f"robust_aggregation {self.robust.rule!r} has no such bound, so it must be 'none'"
            )
        if self.weight_by_sample_count:
            raise InvalidConfigError(
                "differential privacy needs weight_by_sample_count=False: client-reported sample counts "
                "would give one client an unbounded share of the average"
            )
        privacy.check_buffer_size(self.buffer.buffer_size)
        if self.buffer.aggregate_bursts:
            raise InvalidConfigError(
                "aggregate_bursts makes versions of more than buffer_size updates, which the privacy accounting "
                "(one update per client, q = buffer_size / population) does not cover; leave it off with DP"
            )

    @property
    def bounds_contributions(self) -> bool:
        """Whether a version takes at most one update per client: whenever DP is on (its sensitivity needs it).

        Without DP a fast client may have several updates in one buffer, as in FedBuff.
        """
        return self.privacy is not None

    def with_secret_dp_seed(self) -> "AggregationConfig":
        """The config with a secret DP seed drawn from the operating system, when DP is on and none is set.

        Anyone who knows the seed can regenerate the noise and subtract it from a published version, so a fixed
        or default seed would void the guarantee. Drivers call this once when they start (the job in
        ``streaming_jobs.job.run_job``); the seed is part of :meth:`to_dict`, hence of each version's recorded
        ``config_json``, which is how an audit regenerates the noise. Other configs are returned as they are.
        """
        if self.privacy is None or self.privacy.seed is not None:
            return self
        return dataclasses.replace(self, privacy=dataclasses.replace(self.privacy, seed=secrets.randbits(63)))

    def with_enrolled_population(self, enrolled: int | None) -> "AggregationConfig":
        """The config with the population a sampling claim rests on, given the clients able to contribute.

        Only ``participation="random_check_in"`` uses a population (``q = buffer_size / population``):
        without one it becomes ``enrolled``, the clients who can sign an update (``None``: unknown, which is
        refused); a population above ``enrolled`` is refused, since only enrolled clients contribute and the
        claimed ``q`` would understate the real one. Other configs are returned as they are.
        """
        privacy = self.privacy
        if privacy is None or privacy.participation != "random_check_in":
            return self
        if enrolled is not None:
            check_int("enrolled clients", enrolled, minimum=0)
        buffer_size = self.buffer.buffer_size
        if privacy.population is None:
            if not enrolled:
                raise InvalidConfigError(
                    "dp_participation 'random_check_in' needs dp_population and none can be derived "
                    f"(enrolled clients: {enrolled!r}); set dp_population or enrol the clients"
                )
            return dataclasses.replace(self, privacy=dataclasses.replace(privacy, population=enrolled))
        if enrolled is not None and privacy.population > enrolled:
            raise InvalidConfigError(
                f"dp_population ({privacy.population}) exceeds the {enrolled} enrolled, unrevoked clients: only they "
                f"can contribute, so q = {buffer_size}/{privacy.population} would understate the sampling rate"
            )
        return self

    def make_optimizer(self) -> ServerOptimizer:
        """Return a fresh server optimizer (its state is not config); with DP on, the private wrapper around it.

        Raises ``InvalidConfigError`` while DP has no seed: draw one with :meth:`with_secret_dp_seed`.
        """
        inner = self.optimizer.make()
        if self.privacy is None:
            return inner
        return PrivateServerOptimizer(inner, self.privacy, self.buffer.buffer_size)

    def to_dict(self) -> dict[str, JsonScalar]:
        """Return the flat JSON form: ``mode``, then each policy's keys (floats as floats).

        Robustness and privacy keys appear only when they differ from their defaults, so the recorded
        ``config_json`` of a job that does not use them is what it was before they existed.
        """
        data: dict[str, JsonScalar] = {"mode": self.strategy}
        data |= _section_to_dict(self.buffer)
        data |= _section_to_dict(self.staleness)
        data["weight_by_sample_count"] = self.weight_by_sample_count
        data |= _section_to_dict(self.optimizer)
        data["mixing"] = float(self.mixing)
        data |= _section_to_dict(self.robust, only_changed=True)
        if self.privacy is not None:
            data |= _section_to_dict(self.privacy, only_changed=True)
            data[PrivacyPolicy.JSON_KEYS["noise_streams"]] = self.privacy.noise_streams  # see from_recorded
        if self.cohort_fraction is not None:
            data["cohort_fraction"] = self.cohort_fraction
        return data

    @classmethod
    def from_recorded(cls, data: Mapping[str, Any]) -> "AggregationConfig":
        """:meth:`from_dict` of a version's recorded ``config_json``, read as it was meant when recorded.

        A DP configuration recorded before noise was drawn per shard names no ``dp_noise_streams``: its
        noise came from one stream per model (``"model"``), and an audit must draw it that way again.
        """
        recorded = dict(data)
        streams_key = PrivacyPolicy.JSON_KEYS["noise_streams"]
        if recorded.get(PrivacyPolicy.JSON_KEYS["noise_multiplier"]) is not None:
            recorded.setdefault(streams_key, "model")
        return cls.from_dict(recorded)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AggregationConfig":
        """Build a config from its flat JSON form; missing keys take defaults, unknown keys are an error.

        ``strategy`` is another name for ``mode`` (``{"strategy": "fednova"}``); giving both, they must agree.
        Privacy keys (``dp_*``) need ``dp_noise_multiplier``; without it DP is off.
        """
        remaining = dict(data)
        strategy = _strategy_name(remaining)
        default = cls()
        buffer = _section_from_dict(default.buffer, remaining)
        staleness = _section_from_dict(default.staleness, remaining)
        optimizer = _section_from_dict(default.optimizer, remaining)
        robust = _section_from_dict(default.robust, remaining)
        privacy = _privacy_from_dict(remaining)
        weight_by_sample_count = remaining.pop("weight_by_sample_count", default.weight_by_sample_count)
        mixing = _as_float(remaining.pop("mixing", default.mixing))
        cohort_fraction = _as_float(remaining.pop("cohort_fraction", None))
        if remaining:
            raise InvalidConfigError(
                f"unknown aggregation config keys {sorted(remaining)}; known keys are {sorted(_known_keys())}"
            )
        return cls(
            strategy=strategy,
            buffer=buffer,
            staleness=staleness,
            weight_by_sample_count=weight_by_sample_count,
            optimizer=optimizer,
            mixing=mixing,
            robust=robust,
            privacy=privacy,
            cohort_fraction=cohort_fraction,
        )


def _strategy_name(remaining: dict[str, Any]) -> str:
    """Pop ``mode`` / ``strategy`` (the same key under two names) from ``remaining``."""
    mode = remaining.pop("mode", None)
    strategy = remaining.pop("strategy", None)
    if mode is not None and strategy is not None and mode != strategy:
        raise InvalidConfigError(f"strategy {strategy!r} and mode {mode!r} disagree; give one of them")
    name = strategy if strategy is not None else mode
    return AggregationConfig.strategy if name is None else name


def _known_keys() -> set[str]:
    """Every key ``from_dict`` reads."""
    sections = (BufferPolicy, StalenessPolicy, ServerOptimizerSettings, RobustPolicy, PrivacyPolicy)
    return {"mode", "strategy", "weight_by_sample_count", "mixing", "cohort_fraction"}.union(
        *(section.JSON_KEYS.values() for section in sections)
    )


def _privacy_from_dict(remaining: dict[str, Any]) -> PrivacyPolicy | None:
    """Pop the ``dp_*`` keys: a policy when ``dp_noise_multiplier`` is set, ``None`` when no key is."""
    keys = PrivacyPolicy.JSON_KEYS
    if remaining.get(keys["noise_multiplier"]) is None:
        remaining.pop(keys["noise_multiplier"], None)
        given = sorted(key for key in keys.values() if key in remaining)
        if given:
            raise InvalidConfigError(f"{given} need differential privacy on (dp_noise_multiplier), got None")
        return None
    values = {field: remaining.pop(key) for field, key in keys.items() if key in remaining}
    return _build_section(PrivacyPolicy, values)


def _section_from_dict(default: SectionT, remaining: dict[str, Any]) -> SectionT:
    """Pop ``default``'s JSON keys from ``remaining`` and return ``default`` with those values."""
    values = {field: remaining.pop(key) for field, key in default.JSON_KEYS.items() if key in remaining}
    return _build_section(type(default), {**dataclasses.asdict(default), **values})


def _build_section(section: type[SectionT], values: Mapping[str, Any]) -> SectionT:
    """``section(**values)`` with integers given for float fields turned into floats (JSON writes 2.0 as 2)."""
    hints = get_type_hints(section)
    converted = {name: _as_float(value) if _is_float_field(hints[name]) else value for name, value in values.items()}
    return section(**converted)


def _section_to_dict(section: Any, *, only_changed: bool = False) -> dict[str, JsonScalar]:
    """A policy's fields under their JSON keys; ``only_changed``: only those that differ from the defaults."""
    hints = get_type_hints(type(section))
    data: dict[str, JsonScalar] = {}
    when_set: frozenset[str] = getattr(section, "JSON_WHEN_SET", frozenset())
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        unchanged = field.default is not dataclasses.MISSING and value == field.default
        if unchanged and (only_changed or section.JSON_KEYS[field.name] in when_set):
            continue
        data[section.JSON_KEYS[field.name]] = _as_float(value) if _is_float_field(hints[field.name]) else value
    return data


def _is_float_field(hint: Any) -> bool:
    """Whether a field's annotation is ``float`` or ``float | None``."""
    if hint is float:
        return True
    return get_origin(hint) in (Union, types.UnionType) and float in get_args(hint)


def _as_float(value: Any) -> Any:
    """An ``int`` as a ``float``; anything else (``None``, a bool, a string to be refused) as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _strategies_accepting(capability: str) -> str:
    """``'fedbuff'`` or ``'fedbuff' or 'other'``: the registered strategies with ``capability`` set."""
    names = [name for name in strategy_names() if getattr(strategy_class(name), capability)]
    return " or ".join(repr(name) for name in names) or "(none)"
