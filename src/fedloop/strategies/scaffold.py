"""SCAFFOLD (Karimireddy et al. 2020): control variates correct client drift under heterogeneous data.

The server keeps a control variate c (in ServerState.extras) and broadcasts it with the fit tasks; client i keeps
its own c_i as persistent state and trains with every gradient corrected by c - c_i (a penalty whose gradient is
c - c_i, with the correction as the program's per-client aux, so the clients still train as one batch). After K
local steps of size lr it sets c_i+ = c_i - c + (x - y_i) / (K lr) ("option II") and returns the model delta
x - y_i with dc_i = c_i+ - c_i. The server steps the model with the aggregated deltas (the server optimizer's lr is
the paper's global step) and sets c <- c + (1/N) sum_i dc_i, N being the clients available in the round.

With local momentum rho (the paper has none) K becomes FedNova's |a|_1 = (K - rho (1 - rho^K) / (1 - rho)) /
(1 - rho), the weight momentum gives the K gradients in x - y_i, so that c_i still estimates the client's mean
gradient: the correction c - c_i enters the gradient, and momentum amplifies it as it amplifies the gradient.
Dividing by K instead overestimates c_i about 1 / (1 - rho) times, and the amplified corrections diverge (NIID-Bench
with rho = 0.9 did so in its third round).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from .. import checks
from ..client.state import ClientState
from ..client.training import LocalSGD, SGDProgram, Trained
from ..params import check_compatible
from ..types import Aggregate, Params, ServerState, Task, Update
from .base import Strategy
from .fednova import normaliser


def drift(params: Params, global_params: Params, aux: Params) -> torch.Tensor:
    """A penalty whose gradient with respect to each trainable tensor is aux (c - c_i)."""
    return sum((p * aux[k]).sum() for k, p in params.items())  # type: ignore[return-value]


@dataclass(frozen=True)
class Scaffold(Strategy):
    name: ClassVar[str] = "scaffold"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.local, LocalSGD):
            checks.fail(self, "local", "SCAFFOLD's clients run local SGD: expected LocalSGD")

    def init(self, params: Params, seed: int) -> ServerState:
        state = super().init(params, seed)
        return replace(state, extras={k: torch.zeros_like(v) for k, v in state.params.items()})

    @staticmethod
    def client_variate(task: Task, state: ClientState) -> dict[str, torch.Tensor]:
        return {k: state[k] if k in state else torch.zeros_like(v) for k, v in task.params.items()}

    def client_program(self, task: Task, state: ClientState) -> SGDProgram:
        ci = self.client_variate(task, state)
        correction = {k: (task.extras[k] - ci[k]).detach() for k in task.params}
        return replace(super().client_program(task, state), penalty=drift, aux=correction)

    def client_finish(self, task: Task, trained: Trained, state: ClientState) -> tuple[Update, ClientState]:
        update, _ = super().client_finish(task, trained, state)
        c, ci = task.extras, self.client_variate(task, state)
        assert isinstance(self.local, LocalSGD)  # __post_init__ checked it
        scale = normaliser(trained.steps, self.local.momentum) * self.local.lr
        new_ci = {k: ci[k] - c[k] + update.params[k] / scale for k in task.params}
        return replace(update, extras={k: new_ci[k] - ci[k] for k in task.params}), new_ci

    def aggregate_extras(self, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        """The sum of the clients' control-variate deltas."""
        total = {k: torch.zeros_like(v) for k, v in updates[0].params.items()}
        for u in updates:
            check_compatible(total, u.extras, what=f"control-variate delta of client {u.client_id}")
            for k in total:
                total[k].add_(u.extras[k])
        return total

    def apply(self, state: ServerState, agg: Aggregate) -> ServerState:
        new = super().apply(state, agg)
        population = max(agg.population, agg.num_clients)
        return replace(new, extras={k: state.extras[k] + agg.extras[k] / population for k in state.extras})
