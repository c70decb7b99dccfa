"""FedProx (Li et al. 2020): FedAvg whose clients minimise L(w) + mu/2 ||w - w_global||^2, which keeps
heterogeneous clients from drifting far from the global model. A proximal term in the client's program."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, cast

import torch

from .. import checks
from ..client.state import ClientState
from ..client.training import SGDProgram
from ..types import Params, Task
from .base import Strategy


@dataclass(frozen=True)
class Proximal:
    """The penalty mu/2 ||w - w_global||^2 (a value, so that clients with the same mu still train as one batch)."""

    mu: float

    def __call__(self, params: Params, global_params: Params, aux: Params) -> torch.Tensor:
        return cast(torch.Tensor, 0.5 * self.mu * sum(((p - global_params[k]) ** 2).sum() for k, p in params.items()))


@dataclass(frozen=True)
class FedProx(Strategy):
    name: ClassVar[str] = "fedprox"
    mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.in_range(self, "mu", 0.0, float("inf"))

    def client_program(self, task: Task, state: ClientState) -> SGDProgram:
        return replace(super().client_program(task, state), penalty=Proximal(self.mu))
