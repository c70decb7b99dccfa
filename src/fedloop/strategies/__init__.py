"""Federated algorithms, one per file, looked up by name."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import Strategy
from .ditto import Ditto
from .fedavg import FedAvg
from .fedavgm import FedAvgM
from .fedbuff import FedBuff
from .feddyn import FedDyn
from .fednova import FedNova
from .fedopt import FedAdagrad, FedAdam, FedYogi
from .fedprox import FedProx
from .fedsgd import FedSGD
from .power_of_choice import PowerOfChoice
from .qfedavg import QFedAvg
from .scaffold import Scaffold

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    FedAvg, FedSGD, FedProx, Scaffold, FedAvgM, FedAdam, FedYogi, FedAdagrad, PowerOfChoice, FedNova, FedDyn, QFedAvg,
    Ditto, FedBuff)}


def make_strategy(name: str, **parts: Any) -> Strategy:
    """Build a strategy by its registered name from its parts and hyperparameters."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"strategy.name = {name!r} is unknown; allowed: {', '.join(STRATEGIES)}") from None
    return cls(**parts)


__all__ = ["STRATEGIES", "Ditto", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedBuff", "FedDyn", "FedNova",
           "FedProx", "FedSGD", "FedYogi", "PowerOfChoice", "QFedAvg", "Scaffold", "Strategy", "make_strategy"]
