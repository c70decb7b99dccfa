"""FedAdagrad, FedYogi and FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization"): FedAvg whose server
step is an adaptive optimizer (server_opt/adaptive.py, with its lr, beta1, beta2 and tau). Each is the composition
FedAvg + that server optimizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .. import checks
from ..server_opt import Adagrad, Adam, ServerOptimizer, Yogi
from .base import Strategy


class _FedOpt(Strategy):
    optimizer: ClassVar[type]

    def __post_init__(self) -> None:
        super().__post_init__()
        if type(self.server_opt) is not self.optimizer:
            checks.fail(self, "server_opt", f"{self.name}'s server step is {self.optimizer.__name__}")


@dataclass(frozen=True)
class FedAdagrad(_FedOpt):
    name: ClassVar[str] = "fedadagrad"
    optimizer: ClassVar[type] = Adagrad
    server_opt: ServerOptimizer = field(default_factory=Adagrad)


@dataclass(frozen=True)
class FedYogi(_FedOpt):
    name: ClassVar[str] = "fedyogi"
    optimizer: ClassVar[type] = Yogi
    server_opt: ServerOptimizer = field(default_factory=Yogi)


@dataclass(frozen=True)
class FedAdam(_FedOpt):
    name: ClassVar[str] = "fedadam"
    optimizer: ClassVar[type] = Adam
    server_opt: ServerOptimizer = field(default_factory=Adam)
