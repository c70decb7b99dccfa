"""FedAvg (McMahan et al. 2017): E epochs of local minibatch SGD, sample-weighted mean of the
pseudo-gradients W_global - W_local, server SGD. With server_lr = 1 this is exactly model averaging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..local import ClientContext, local_sgd
from ..params import sub
from ..types import Task, Update
from .base import Strategy


@dataclass(frozen=True)
class FedAvg(Strategy):
    name: ClassVar[str] = "fedavg"

    def local_update(self, task: Task, ctx: ClientContext) -> Update:
        o = self.local
        trained, metrics = local_sgd(ctx, task.params, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
                                     momentum=o.momentum, weight_decay=o.weight_decay, seed=task.seed)
        return Update(task.client_id, task.round, sub(task.params, trained), len(ctx.train), metrics)
