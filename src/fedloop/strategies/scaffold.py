"""SCAFFOLD (Karimireddy et al. 2020): control variates correct client drift under heterogeneous data.

The server keeps a control variate c (in ServerState.extras) and sends it with each task; client i keeps its
own c_i as persistent state and trains with every gradient corrected by c - c_i. After K local steps of size
lr it sets c_i+ = c_i - c + (x - y_i) / (K lr) ("option II") and returns the model delta x - y_i with
dc_i = c_i+ - c_i. The server steps the model with the aggregated deltas (server_lr is the paper's global
step) and sets c <- c + (1/N) sum_i dc_i, N being the clients available in the round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ..local import ClientContext, run_program
from ..params import check_compatible
from ..types import Aggregate, ClientInfo, Params, ServerState, Task, Update
from .base import Strategy


@dataclass(frozen=True)
class Scaffold(Strategy):
    name: ClassVar[str] = "scaffold"

    def init(self, params: Params, seed: int) -> ServerState:
        state = super().init(params, seed)
        return replace(state, extras={k: torch.zeros_like(v) for k, v in state.params.items()})

    def configure(self, state: ServerState, clients: Sequence[ClientInfo]) -> list[Task]:
        control = dict(state.extras)  # one mapping shared by the round's tasks (sent once per round)
        return [replace(t, extras=control) for t in super().configure(state, clients)]

    def local_update(self, task: Task, ctx: ClientContext) -> Update:
        c = task.extras
        ci = {k: ctx.state.get(k, torch.zeros_like(v)) for k, v in task.params.items()}
        trainable = {name for name, _ in ctx.model.named_parameters()}
        correction = {k: (c[k] - ci[k]).detach() for k in trainable}

        def drift(params: Params, global_params: Params) -> torch.Tensor:  # its gradient is c - c_i
            return sum((p * correction[k]).sum() for k, p in params.items())

        update = run_program(self.sgd_program(penalty=drift), task, ctx)
        batch = len(ctx.train) if self.local.batch_size is None else self.local.batch_size
        steps = self.local.epochs * math.ceil(len(ctx.train) / batch)
        new_ci = {k: ci[k] - c[k] + update.params[k] / (steps * self.local.lr) if k in trainable else ci[k]
                  for k in task.params}
        delta_c = {k: new_ci[k] - ci[k] for k in task.params}
        ctx.state.clear()
        ctx.state.update(new_ci)
        return replace(update, extras=delta_c)

    def aggregate(self, updates: Sequence[Update]) -> Aggregate:
        """The model deltas as the base strategy weighs them; extras hold the sum of the dc_i."""
        agg = super().aggregate(updates)
        total = {k: torch.zeros_like(v) for k, v in updates[0].params.items()}
        for u in updates:
            check_compatible(total, u.extras, what=f"control-variate delta of client {u.client_id}")
            for k in total:
                total[k].add_(u.extras[k])
        return replace(agg, extras=total)

    def apply(self, state: ServerState, agg: Aggregate) -> ServerState:
        new = super().apply(state, agg)
        population = max(agg.population, agg.num_clients)
        return replace(new, extras={k: state.extras[k] + agg.extras[k] / population for k in state.extras})
