"""Staleness functions ``f(s)`` that down-weight updates trained on an old global version.

``s = current_version - base_version`` is an integer ``>= 0``. Every function returns a value in
``(0, 1]`` with ``f(0) == 1``, so a fresh update always keeps its full weight.
"""

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, get_args

from aggregator._checks import check_int, check_non_negative
from aggregator.errors import InvalidConfigError, InvalidStalenessError

StalenessFunctionName = Literal["constant", "polynomial", "hinge", "inverse_sqrt"]
STALENESS_FUNCTIONS: Final[tuple[str, ...]] = get_args(StalenessFunctionName)


def check_staleness(staleness: int) -> int:
    """Return ``staleness`` as an ``int``; raise ``InvalidStalenessError`` unless it is an integer >= 0."""
    if isinstance(staleness, bool):
        raise InvalidStalenessError(f"staleness must be an integer >= 0, got the bool {staleness!r}")
    try:
        value = operator.index(staleness)
    except TypeError:
        raise InvalidStalenessError(
            f"staleness must be an integer >= 0, got {staleness!r} of type {type(staleness).__name__}"
        ) from None
    if value < 0:
        raise InvalidStalenessError(f"staleness must be an integer >= 0, got {value}")
    return value


def constant(staleness: int) -> float:
    """Return 1: every update counts fully, however stale."""
    check_staleness(staleness)
    return 1.0


def polynomial(staleness: int, exponent: float = 0.5) -> float:
    """Return ``(1 + s) ** -exponent``."""
    s = check_staleness(staleness)
    check_non_negative("exponent", exponent)
    return float((1.0 + s) ** -exponent)


def hinge(staleness: int, a: float = 10.0, b: int = 4) -> float:
    """Return 1 while ``s <= b``, then ``1 / (a * (s - b) + 1)``."""
    s = check_staleness(staleness)
    check_non_negative("hinge a", a)
    check_int("hinge b", b, minimum=0)
    if s <= b:
        return 1.0
    return 1.0 / (a * (s - b) + 1.0)


def inverse_sqrt(staleness: int) -> float:
    """Return ``1 / sqrt(1 + s)`` (polynomial with exponent 1/2, kept by name for configs)."""
    s = check_staleness(staleness)
    return 1.0 / math.sqrt(1.0 + s)


@dataclass(frozen=True)
class StalenessPolicy:
    """A staleness function with its parameters, and the staleness beyond which updates are rejected."""

    JSON_KEYS: ClassVar[Mapping[str, str]] = {
        "function": "staleness_function",
        "exponent": "staleness_exponent",
        "hinge_a": "hinge_a",
        "hinge_b": "hinge_b",
        "max_staleness": "max_staleness",
    }
    """Each field's key in the aggregation JSON (``config_json``)."""

    function: StalenessFunctionName
    exponent: float = 0.5
    hinge_a: float = 10.0
    hinge_b: int = 4
    max_staleness: int | None = 20

    def __post_init__(self) -> None:
        """Validate every field, so a policy that exists is always usable."""
        if self.function not in STALENESS_FUNCTIONS:
            raise InvalidConfigError(
                f"staleness function must be one of {list(STALENESS_FUNCTIONS)}, got {self.function!r}"
            )
        check_non_negative("exponent", self.exponent)
        check_non_negative("hinge_a", self.hinge_a)
        check_int("hinge_b", self.hinge_b, minimum=0)
        if self.max_staleness is not None:
            check_int("max_staleness", self.max_staleness, minimum=0)

    def weight(self, staleness: int) -> float:
        """Return ``f(staleness)``; does not look at ``max_staleness`` (see ``is_too_stale``)."""
        if self.function == "constant":
            return constant(staleness)
        if self.function == "polynomial":
            return polynomial(staleness, self.exponent)
        if self.function == "hinge":
            return hinge(staleness, self.hinge_a, self.hinge_b)
        return inverse_sqrt(staleness)

    def is_too_stale(self, staleness: int) -> bool:
        """Return whether ``staleness`` exceeds ``max_staleness`` (never, when it is ``None``)."""
        s = check_staleness(staleness)
        return self.max_staleness is not None and s > self.max_staleness
