"""Argument checks shared by the aggregator's policies and optimizers; each names the bad value."""

import math
from datetime import datetime

from aggregator.errors import InvalidConfigError, NaiveDatetimeError


def check_number(name: str, value: float) -> float:
    """Return ``value`` as a finite float; raise ``InvalidConfigError`` for non-numbers, bools, NaN, inf."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidConfigError(f"{name} must be a number, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidConfigError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_positive(name: str, value: float) -> float:
    """Return ``value`` if it is a finite number > 0."""
    number = check_number(name, value)
    if number <= 0:
        raise InvalidConfigError(f"{name} must be > 0, got {value!r}")
    return number


def check_non_negative(name: str, value: float) -> float:
    """Return ``value`` if it is a finite number >= 0."""
    number = check_number(name, value)
    if number < 0:
        raise InvalidConfigError(f"{name} must be >= 0, got {value!r}")
    return number


def check_unit_interval(name: str, value: float) -> float:
    """Return ``value`` if it lies in ``[0, 1)`` (decay rates: betas, momentum)."""
    number = check_number(name, value)
    if not 0.0 <= number < 1.0:
        raise InvalidConfigError(f"{name} must be in [0, 1), got {value!r}")
    return number


def check_int(name: str, value: int, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfigError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise InvalidConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_aware(name: str, value: datetime) -> datetime:
    """Return ``value`` if it is a timezone-aware datetime; raise ``NaiveDatetimeError`` otherwise."""
    if not isinstance(value, datetime):
        raise NaiveDatetimeError(f"{name} must be a datetime, got {value!r} of type {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise NaiveDatetimeError(f"{name} must be timezone-aware, got the naive datetime {value.isoformat()}")
    return value


def check_fraction(name: str, value: float) -> float:
    """Return ``value`` if it lies in ``(0, 1]`` (a mixing rate)."""
    number = check_number(name, value)
    if not 0.0 < number <= 1.0:
        raise InvalidConfigError(f"{name} must be in (0, 1], got {value!r}")
    return number
