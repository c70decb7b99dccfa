"""FedSGD: each client sends one full-batch gradient (1/N) sum grad L over its data; the server
averages them and takes one SGD step W <- W - eta * grad_avg."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..local import ClientContext, full_gradient
from ..types import Task, Update
from .base import Strategy


@dataclass(frozen=True)
class FedSGD(Strategy):
    name: ClassVar[str] = "fedsgd"

    def local_update(self, task: Task, ctx: ClientContext) -> Update:
        grad, metrics = full_gradient(ctx, task.params)
        return Update(task.client_id, task.round, grad, len(ctx.train), metrics)
