"""The aggregation configuration the streaming job runs with and records on every model version."""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, Literal, get_args

from aggregator._checks import check_fraction
from aggregator.buffer import BufferPolicy
from aggregator.errors import InvalidConfigError
from aggregator.server_optimizers import SERVER_OPTIMIZERS, ServerOptimizer, make_server_optimizer
from aggregator.staleness import StalenessFunctionName, StalenessPolicy

AggregationMode = Literal["fedbuff", "fedasync", "fedavg"]
AGGREGATION_MODES: Final[tuple[str, ...]] = get_args(AggregationMode)

JsonScalar = str | int | float | bool | None

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
    }
)


@dataclass(frozen=True)
class AggregationConfig:
    """Everything that decides how updates become a new global version; validated on construction.

    ``fedbuff``: buffer of ``buffer_size`` staleness-weighted updates, then a server-optimizer step.
    ``fedasync``: each update on its own (``buffer_size`` must be 1), mixed in with ``mixing * f(s)``.
    ``fedavg``: synchronous rounds, plain averaging (server optimizer must be ``sgd`` with learning rate 1;
    use ``fedbuff`` with ``max_staleness=0`` for synchronous rounds with another server optimizer).
    """

    mode: AggregationMode = "fedbuff"
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

    def __post_init__(self) -> None:
        """Validate on construction, so a config that exists can always be run."""
        self.validate()

    def validate(self) -> None:
        """Raise ``InvalidConfigError`` naming the first field that is out of range or inconsistent."""
        if self.mode not in AGGREGATION_MODES:
            raise InvalidConfigError(f"mode must be one of {list(AGGREGATION_MODES)}, got {self.mode!r}")
        if not isinstance(self.weight_by_sample_count, bool):
            raise InvalidConfigError(f"weight_by_sample_count must be a bool, got {self.weight_by_sample_count!r}")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise InvalidConfigError(
                f"server_optimizer must be one of {list(SERVER_OPTIMIZERS)}, got {self.server_optimizer!r}"
            )
        self.staleness_policy()
        self.buffer_policy()
        self.make_optimizer()
        check_fraction("mixing", self.mixing)
        if self.mode == "fedasync" and self.buffer_size != 1:
            raise InvalidConfigError(
                f"mode 'fedasync' aggregates one update at a time, so buffer_size must be 1, got {self.buffer_size}"
            )
        if self.mode == "fedavg" and (self.server_optimizer != "sgd" or self.server_learning_rate != 1.0):
            raise InvalidConfigError(
                "mode 'fedavg' averages without a server optimizer, so it needs server_optimizer 'sgd' "
                f"and server_learning_rate 1.0, got {self.server_optimizer!r} "
                f"and {self.server_learning_rate!r}; use mode 'fedbuff' for a server optimizer"
            )

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

    def make_optimizer(self) -> ServerOptimizer:
        """Return a fresh server optimizer with these hyperparameters (its state is not config)."""
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
        """Return the fields as JSON-safe scalars (floats as floats), in declaration order."""
        values: dict[str, JsonScalar] = asdict(self)
        for name in _FLOAT_FIELDS:
            value = values[name]
            if value is not None and not isinstance(value, str):
                values[name] = float(value)
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AggregationConfig":
        """Build a config from ``to_dict`` output; missing keys take defaults, unknown keys are an error."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidConfigError(f"unknown aggregation config keys {unknown}; known keys are {sorted(known)}")
        kwargs = dict(data)
        for name in _FLOAT_FIELDS & set(kwargs):
            value = kwargs[name]
            if isinstance(value, int) and not isinstance(value, bool):
                kwargs[name] = float(value)
        return cls(**kwargs)
