"""FedProx (Li et al. 2020): FedAvg whose clients minimise L(w) + mu/2 ||w - w_global||^2, which keeps
heterogeneous clients from drifting far from the global model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..local import SGDProgram
from ..types import Params, Task
from .base import Strategy


@dataclass(frozen=True)
class FedProx(Strategy):
    name: ClassVar[str] = "fedprox"

    mu: float = 0.01

    def proximal(self, params: Params, global_params: Params) -> torch.Tensor:
        return 0.5 * self.mu * sum(((p - global_params[k]) ** 2).sum() for k, p in params.items())

    def client_program(self, task: Task) -> SGDProgram:
        return self.sgd_program(penalty=self.proximal)
