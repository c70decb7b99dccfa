"""FedAvg (McMahan et al. 2017): E epochs of local minibatch SGD, sample-weighted mean of the
pseudo-gradients W_global - W_local, server SGD. With server_lr = 1 this is exactly model averaging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..local import SGDProgram
from ..types import Task
from .base import Strategy


@dataclass(frozen=True)
class FedAvg(Strategy):
    name: ClassVar[str] = "fedavg"

    def client_program(self, task: Task) -> SGDProgram:
        return self.sgd_program()
