"""Strategies by name: the configuration's ``mode`` (or ``strategy``) names one registered here.

A new algorithm is one module with a :class:`~aggregator.strategies.base.Strategy` subclass decorated with
``@register_strategy("name")``, imported once by :mod:`aggregator.strategies`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from aggregator.errors import InvalidConfigError
from aggregator.strategies.base import Strategy
from aggregator.strategies.private import DifferentiallyPrivate

if TYPE_CHECKING:
    from aggregator.config import AggregationConfig

__all__ = ["make_strategy", "register_strategy", "strategy_class", "strategy_names"]

_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_REGISTRY: dict[str, type[Strategy]] = {}

StrategyType = TypeVar("StrategyType", bound=type[Strategy])


def register_strategy(name: str) -> Callable[[StrategyType], StrategyType]:
    """Class decorator: make ``cls`` the strategy called ``name`` (lower-case, unique)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidConfigError(f"a strategy name must match {_NAME.pattern}, got {name!r}")

    def register(cls: StrategyType) -> StrategyType:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise InvalidConfigError(f"strategy {name!r} must be a Strategy subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise InvalidConfigError(f"strategy name {name!r} is taken by {existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def strategy_names() -> tuple[str, ...]:
    """Every registered strategy name, sorted."""
    return tuple(sorted(_REGISTRY))


def strategy_class(name: str) -> type[Strategy]:
    """The strategy registered as ``name``; ``InvalidConfigError`` naming the known ones otherwise."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    raise InvalidConfigError(f"mode must be one of {list(strategy_names())}, got {name!r}")


def make_strategy(config: AggregationConfig) -> Strategy:
    """The strategy ``config`` describes, composed with differential privacy when ``dp_noise_multiplier`` is set."""
    strategy = strategy_class(config.strategy).from_config(config)
    if config.privacy is None:
        return strategy
    return DifferentiallyPrivate(strategy, config.robust.max_update_norm)
