"""FedDyn (Acar et al., ICLR 2021, "Federated Learning Based on Dynamic Regularization"): each client's local
objective is corrected by a linear term it keeps from round to round, so that the clients' stationary points
agree with the global one however heterogeneous their data.

Client k keeps g_k (client state, zero at first) and minimises L_k(w) - <g_k, w> + alpha/2 ||w - w_global||^2 by
local SGD; then g_k <- g_k - alpha (w_k - w_global), and it sends the usual delta w_global - w_k. The server keeps
h (ServerState.extras, never sent): h <- h - (alpha / m) sum_k (w_k - w_global) over the round's clients, m the
clients the round was drawn from, and w <- mean_k w_k - h / alpha (their Algorithm 1): a server step with the
pseudo-gradient mean_k delta_k + h / alpha (exactly FedDyn with server SGD at lr 1). The mean is uniform over the
round's clients, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar, cast

import torch

from .. import checks
from ..aggregators import Aggregator, WeightedMean
from ..client.state import ClientState
from ..client.training import LocalSGD, SGDProgram, Trained
from ..types import Aggregate, Broadcast, Params, ServerState, Task, Update
from .base import Strategy, require_mean


@dataclass(frozen=True)
class DynamicRegulariser:
    """-<g_k, w> + alpha/2 ||w - w_global||^2, with g_k the client's own tensors (the program's aux)."""

    alpha: float

    def __call__(self, params: Params, global_params: Params, aux: Params) -> torch.Tensor:
        return cast(torch.Tensor, sum(0.5 * self.alpha * ((p - global_params[k]) ** 2).sum() - (p * aux[k]).sum()
                                      for k, p in params.items()))


@dataclass(frozen=True)
class FedDyn(Strategy):
    name: ClassVar[str] = "feddyn"
    aggregator: Aggregator = field(default_factory=lambda: WeightedMean("uniform"))
    alpha: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.positive(self, "alpha")
        if not isinstance(self.local, LocalSGD):
            checks.fail(self, "local", "FedDyn's clients run local SGD: expected LocalSGD")
        require_mean(self, "FedDyn's server averages the round's client models uniformly", weighting="uniform")

    def init(self, params: Params, seed: int) -> ServerState:
        state = super().init(params, seed)
        return replace(state, extras={k: torch.zeros_like(v) for k, v in state.params.items()})

    def broadcast(self, state: ServerState, stage: str = "fit") -> Broadcast:
        """The params only: h stays on the server."""
        return Broadcast(state.round, state.params, {}, stage)

    @staticmethod
    def linear_term(task: Task, state: ClientState) -> dict[str, torch.Tensor]:
        return {k: state[k] if k in state else torch.zeros_like(v) for k, v in task.params.items()}

    def client_program(self, task: Task, state: ClientState) -> SGDProgram:
        return replace(super().client_program(task, state), penalty=DynamicRegulariser(self.alpha),
                       aux=self.linear_term(task, state))

    def client_finish(self, task: Task, trained: Trained, state: ClientState) -> tuple[Update, ClientState]:
        update, _ = super().client_finish(task, trained, state)
        g = self.linear_term(task, state)
        return update, {k: g[k] + self.alpha * update.params[k] for k in g}  # g - alpha (w_k - w_global)

    def apply(self, state: ServerState, agg: Aggregate) -> ServerState:
        m = max(agg.population, agg.num_clients)
        h = {k: state.extras[k] + (self.alpha * agg.num_clients / m) * agg.params[k] for k in state.extras}
        step = {k: agg.params[k] + h[k] / self.alpha for k in h}
        new = super().apply(state, replace(agg, params=step))
        return replace(new, extras=h)
