"""Federated algorithms, one per file, looked up by name."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..local import SGDProgram
from .base import LocalSGD, Strategy
from .fedavg import FedAvg
from .fedprox import FedProx
from .fedsgd import FedSGD
from .scaffold import Scaffold

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, FedSGD, FedProx, Scaffold)}


def make_strategy(name: str, **hyperparams: Any) -> Strategy:
    """Build a strategy by its registered name."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"strategy.name = {name!r} is unknown; allowed: {', '.join(STRATEGIES)}") from None
    return cls(**hyperparams)


__all__ = ["STRATEGIES", "FedAvg", "FedProx", "FedSGD", "LocalSGD", "SGDProgram", "Scaffold", "Strategy",
           "make_strategy"]
