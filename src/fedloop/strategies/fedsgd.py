"""FedSGD: each client sends one full-batch gradient (1/N) sum grad L over its data; the server
averages them and takes one SGD step W <- W - eta * grad_avg."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..local import SGDProgram
from ..types import Task
from .base import Strategy


@dataclass(frozen=True)
class FedSGD(Strategy):
    name: ClassVar[str] = "fedsgd"

    def client_program(self, task: Task) -> SGDProgram:
        return SGDProgram(epochs=1, batch_size=None, returns="gradient")
