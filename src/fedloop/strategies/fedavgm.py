"""FedAvgM (Hsu, Qi & Brown 2019): FedAvg with server momentum, which damps the client drift of non-IID data.
The composition FedAvg + SGD(lr 1, momentum 0.9)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .. import checks
from ..server_opt import SGD, ServerOptimizer
from .base import Strategy


@dataclass(frozen=True)
class FedAvgM(Strategy):
    name: ClassVar[str] = "fedavgm"
    server_opt: ServerOptimizer = field(default_factory=lambda: SGD(lr=1.0, momentum=0.9))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.server_opt, SGD) or self.server_opt.momentum == 0:
            checks.fail(self, "server_opt", "FedAvgM's server step is SGD with momentum > 0")
