"""Server optimizers of FedOpt (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

Each treats the pseudo-gradient ``g = -aggregated_delta`` as a gradient and takes one step on the global
parameters. The adaptive rules follow the paper's Algorithm 2: no bias correction, ``tau`` as the
adaptivity epsilon outside the square root, second moments starting at ``tau ** 2`` and first moments at 0.

Arithmetic runs in float64; parameters and optimizer state are stored as float32, so a state saved with
``state_dict`` and restored with ``load_state_dict`` continues bit for bit.
"""

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt

from aggregator._checks import check_positive, check_unit_interval
from aggregator.errors import InvalidConfigError, InvalidStateError, ShapeMismatchError
from aggregator.weights import check_same_structure
from schemas.tensors import Tensors

Float64Array = npt.NDArray[np.float64]

STEP_KEY: Final = "step"
"""Key of the 0-d int64 step counter in every state dict."""

SERVER_OPTIMIZERS: Final[tuple[str, ...]] = ("sgd", "momentum", "adam", "yogi", "adagrad")


class ServerOptimizer(ABC):
    """A stateful server optimizer: ``step`` returns new parameters and advances the internal state.

    State is a set of named slots (e.g. ``"m"``, ``"v"``), each holding one float32 array per parameter,
    created on the first step from the parameters' shapes. ``state_dict`` flattens it to
    ``{"step": int64 scalar, "<slot>/<parameter>": float32 array}``.
    """

    def __init__(self, learning_rate: float) -> None:
        self._learning_rate = check_positive("learning_rate", learning_rate)
        self._step_count = 0
        self._slots: dict[str, Tensors] = {}

    @property
    @abstractmethod
    def name(self) -> str:
        """Name of the optimizer as ``make_server_optimizer`` knows it."""

    @property
    def learning_rate(self) -> float:
        """Server learning rate (eta)."""
        return self._learning_rate

    @property
    def step_count(self) -> int:
        """Number of steps taken so far (restored by ``load_state_dict``)."""
        return self._step_count

    @property
    @abstractmethod
    def slot_names(self) -> tuple[str, ...]:
        """Names of the per-parameter state slots this optimizer keeps."""

    def initial_slot_value(self, slot: str) -> float:
        """Value a slot starts at on the first step (0 unless overridden)."""
        return 0.0

    @abstractmethod
    def _update(
        self, param: Float64Array, gradient: Float64Array, slots: dict[str, Float64Array]
    ) -> tuple[Float64Array, dict[str, Float64Array]]:
        """Return the new parameter and new slot values for one parameter array."""

    def step(self, params: Tensors, aggregated_delta: Tensors) -> Tensors:
        """Return new parameters after one step on ``g = -aggregated_delta``; inputs are not modified."""
        check_same_structure(params, aggregated_delta)
        slots = self._slots or {
            slot: {
                key: np.full(array.shape, self.initial_slot_value(slot), dtype=np.float32)
                for key, array in params.items()
            }
            for slot in self.slot_names
        }
        for slot, values in slots.items():
            try:
                check_same_structure(params, values)
            except ShapeMismatchError as error:
                raise ShapeMismatchError(
                    f"optimizer state slot {slot!r} does not fit the parameters: {error}"
                ) from None
        new_params: Tensors = {}
        new_slots: dict[str, Tensors] = {slot: {} for slot in slots}
        for key, param in params.items():
            gradient = -np.asarray(aggregated_delta[key], dtype=np.float64)
            current = {slot: np.asarray(slots[slot][key], dtype=np.float64) for slot in slots}
            updated_param, updated_slots = self._update(np.asarray(param, dtype=np.float64), gradient, current)
            new_params[key] = updated_param.astype(np.float32)
            for slot, value in updated_slots.items():
                new_slots[slot][key] = value.astype(np.float32)
        self._slots = new_slots
        self._step_count += 1
        return new_params

    def state_dict(self) -> dict[str, npt.NDArray[Any]]:
        """Return a flat copy of the state: ``"step"`` plus ``"<slot>/<parameter>"`` arrays."""
        state: dict[str, npt.NDArray[Any]] = {STEP_KEY: np.array(self._step_count, dtype=np.int64)}
        for slot, values in self._slots.items():
            for key, array in values.items():
                state[f"{slot}/{key}"] = array.copy()
        return state

    def load_state_dict(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Replace the state with a copy of ``state``, as produced by ``state_dict``."""
        if STEP_KEY not in state:
            raise InvalidStateError(f"state has no {STEP_KEY!r} entry; keys are {sorted(state)}")
        step_array = np.asarray(state[STEP_KEY])
        if step_array.shape != () or not np.issubdtype(step_array.dtype, np.integer):
            raise InvalidStateError(
                f"state {STEP_KEY!r} must be an integer scalar, got dtype {step_array.dtype} "
                f"and shape {step_array.shape}"
            )
        step_count = int(step_array)
        if step_count < 0:
            raise InvalidStateError(f"state {STEP_KEY!r} must be >= 0, got {step_count}")
        slots: dict[str, Tensors] = {}
        for full_key, array in state.items():
            if full_key == STEP_KEY:
                continue
            slot, separator, key = full_key.partition("/")
            if not separator or slot not in self.slot_names or not key:
                raise InvalidStateError(
                    f"unexpected state key {full_key!r} for optimizer {self.name!r}; "
                    f"expected {STEP_KEY!r} or '<slot>/<parameter>' with slot in {list(self.slot_names)}"
                )
            value = np.asarray(array)
            if value.dtype != np.float32:
                raise InvalidStateError(f"state entry {full_key!r} must be float32, got {value.dtype}")
            slots.setdefault(slot, {})[key] = value.copy()
        if slots:
            missing = sorted(set(self.slot_names) - set(slots))
            if missing:
                raise InvalidStateError(f"state for optimizer {self.name!r} lacks the slots {missing}")
            reference = slots[self.slot_names[0]]
            for values in slots.values():
                try:
                    check_same_structure(reference, values)
                except ValueError as error:
                    raise InvalidStateError(f"state slots disagree: {error}") from None
        self._slots = slots
        self._step_count = step_count


class ServerSGD(ServerOptimizer):
    """FedAvg with a server learning rate; FedAvgM when ``momentum > 0``.

    ``v = momentum * v + g``; ``theta -= learning_rate * v``. Without momentum no slot is kept.
    """

    def __init__(self, learning_rate: float, momentum: float = 0.0) -> None:
        super().__init__(learning_rate)
        self._momentum = check_unit_interval("momentum", momentum)

    @property
    def name(self) -> str:
        """``"momentum"`` when momentum is on, else ``"sgd"``."""
        return "momentum" if self._momentum > 0 else "sgd"

    @property
    def momentum(self) -> float:
        """Momentum coefficient (0 disables it)."""
        return self._momentum

    @property
    def slot_names(self) -> tuple[str, ...]:
        """``("v",)`` with momentum, else nothing."""
        return ("v",) if self._momentum > 0 else ()

    def _update(
        self, param: Float64Array, gradient: Float64Array, slots: dict[str, Float64Array]
    ) -> tuple[Float64Array, dict[str, Float64Array]]:
        if self._momentum == 0:
            return param - self._learning_rate * gradient, {}
        velocity = self._momentum * slots["v"] + gradient
        return param - self._learning_rate * velocity, {"v": velocity}


class _AdaptiveOptimizer(ServerOptimizer):
    """Shared first moment and update of FedAdam, FedYogi and FedAdagrad; subclasses set the second moment."""

    def __init__(self, learning_rate: float, beta1: float, tau: float) -> None:
        super().__init__(learning_rate)
        self._beta1 = check_unit_interval("beta1", beta1)
        self._tau = check_positive("tau", tau)

    @property
    def beta1(self) -> float:
        """Decay of the first moment."""
        return self._beta1

    @property
    def tau(self) -> float:
        """Adaptivity epsilon; second moments start at ``tau ** 2``."""
        return self._tau

    @property
    def slot_names(self) -> tuple[str, ...]:
        """``("m", "v")``: first and second moments."""
        return ("m", "v")

    def initial_slot_value(self, slot: str) -> float:
        """``tau ** 2`` for the second moment, 0 for the first."""
        return self._tau**2 if slot == "v" else 0.0

    @abstractmethod
    def _second_moment(self, previous: Float64Array, squared_gradient: Float64Array) -> Float64Array:
        """Return the new second moment from the previous one and ``g ** 2``."""

    def _update(
        self, param: Float64Array, gradient: Float64Array, slots: dict[str, Float64Array]
    ) -> tuple[Float64Array, dict[str, Float64Array]]:
        first = self._beta1 * slots["m"] + (1.0 - self._beta1) * gradient
        second = self._second_moment(slots["v"], np.square(gradient))
        new_param = param - self._learning_rate * first / (np.sqrt(second) + self._tau)
        return new_param, {"m": first, "v": second}


class ServerAdam(_AdaptiveOptimizer):
    """FedAdam: ``v = beta2 * v + (1 - beta2) * g**2``."""

    def __init__(self, learning_rate: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(learning_rate, beta1, tau)
        self._beta2 = check_unit_interval("beta2", beta2)

    @property
    def name(self) -> str:
        """``"adam"``."""
        return "adam"

    @property
    def beta2(self) -> float:
        """Decay of the second moment."""
        return self._beta2

    def _second_moment(self, previous: Float64Array, squared_gradient: Float64Array) -> Float64Array:
        return self._beta2 * previous + (1.0 - self._beta2) * squared_gradient


class ServerYogi(_AdaptiveOptimizer):
    """FedYogi: ``v = v - (1 - beta2) * g**2 * sign(v - g**2)``; ``v`` changes additively, never explodes."""

    def __init__(self, learning_rate: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(learning_rate, beta1, tau)
        self._beta2 = check_unit_interval("beta2", beta2)

    @property
    def name(self) -> str:
        """``"yogi"``."""
        return "yogi"

    @property
    def beta2(self) -> float:
        """Rate of the additive second-moment update."""
        return self._beta2

    def _second_moment(self, previous: Float64Array, squared_gradient: Float64Array) -> Float64Array:
        return previous - (1.0 - self._beta2) * squared_gradient * np.sign(previous - squared_gradient)


class ServerAdagrad(_AdaptiveOptimizer):
    """FedAdagrad: ``v = v + g**2``; ``beta1 = 0`` (the default) makes the first moment just ``g``."""

    def __init__(self, learning_rate: float, tau: float = 1e-3, beta1: float = 0.0) -> None:
        super().__init__(learning_rate, beta1, tau)

    @property
    def name(self) -> str:
        """``"adagrad"``."""
        return "adagrad"

    def _second_moment(self, previous: Float64Array, squared_gradient: Float64Array) -> Float64Array:
        return previous + squared_gradient


def make_server_optimizer(name: str, learning_rate: float, **kwargs: float) -> ServerOptimizer:
    """Build a server optimizer by name: ``"sgd"``, ``"momentum"``, ``"adam"``, ``"yogi"``, ``"adagrad"``.

    ``kwargs`` are the optimizer's own hyperparameters (``momentum``; ``beta1``, ``beta2``, ``tau``);
    ``"sgd"`` accepts only ``momentum=0``; ``"momentum"`` defaults to ``momentum=0.9`` and requires it > 0.
    """
    allowed: dict[str, tuple[str, ...]] = {
        "sgd": ("momentum",),
        "momentum": ("momentum",),
        "adam": ("beta1", "beta2", "tau"),
        "yogi": ("beta1", "beta2", "tau"),
        "adagrad": ("beta1", "tau"),
    }
    if name not in allowed:
        raise InvalidConfigError(f"server optimizer must be one of {list(SERVER_OPTIMIZERS)}, got {name!r}")
    unknown = sorted(set(kwargs) - set(allowed[name]))
    if unknown:
        raise InvalidConfigError(
            f"server optimizer {name!r} takes {list(allowed[name])}, got unexpected arguments {unknown}"
        )
    if name == "sgd":
        momentum = kwargs.get("momentum", 0.0)
        if momentum != 0:
            raise InvalidConfigError(f"server optimizer 'sgd' has no momentum, got {momentum!r}; use 'momentum'")
        return ServerSGD(learning_rate)
    if name == "momentum":
        momentum = kwargs.get("momentum", 0.9)
        if momentum == 0:
            raise InvalidConfigError(f"server optimizer 'momentum' needs momentum > 0, got {momentum!r}")
        return ServerSGD(learning_rate, momentum=momentum)
    if name == "adam":
        return ServerAdam(learning_rate, **kwargs)
    if name == "yogi":
        return ServerYogi(learning_rate, **kwargs)
    return ServerAdagrad(learning_rate, **kwargs)


@dataclass(frozen=True)
class ServerOptimizerSettings:
    """Which server optimizer a job steps with, and its hyperparameters; validated on construction.

    ``momentum`` is read by ``"sgd"`` (must be 0) and ``"momentum"``; ``beta1``, ``beta2`` and ``tau`` by the
    adaptive optimizers (``"adagrad"`` reads ``tau`` only). :meth:`make` builds a fresh optimizer.
    """

    JSON_KEYS: ClassVar[Mapping[str, str]] = {
        "name": "server_optimizer",
        "learning_rate": "server_learning_rate",
        "momentum": "server_momentum",
        "beta1": "server_beta1",
        "beta2": "server_beta2",
        "tau": "server_tau",
    }
    """Each field's key in the aggregation JSON (``config_json``)."""

    name: str = "sgd"
    learning_rate: float = 1.0
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        """Validate by building the optimizer once (its constructor checks every hyperparameter)."""
        self.make()

    def make(self) -> ServerOptimizer:
        """Return a fresh optimizer with these hyperparameters (its state is not settings)."""
        hyperparameters: dict[str, float]
        if self.name in ("sgd", "momentum"):
            hyperparameters = {"momentum": self.momentum}
        elif self.name == "adagrad":
            hyperparameters = {"tau": self.tau}
        else:
            hyperparameters = {"beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}
        return make_server_optimizer(self.name, self.learning_rate, **hyperparameters)
