"""FedSGD: each client sends one full-batch gradient (1/N) sum grad L over its data; the server averages them and
takes one SGD step W <- W - lr * grad_avg. FedAvg with the FullGradient local spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .. import checks
from ..client.training import FullGradient, LocalSpec
from .base import Strategy


@dataclass(frozen=True)
class FedSGD(Strategy):
    name: ClassVar[str] = "fedsgd"
    local: LocalSpec = field(default_factory=FullGradient)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.local, FullGradient):
            checks.fail(self, "local", "FedSGD's clients send one full-batch gradient: expected FullGradient()")
