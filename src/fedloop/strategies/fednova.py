"""FedNova (Wang et al., NeurIPS 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization"): normalised averaging, so that clients that take more local steps (more data, more epochs, no
straggling) do not pull the global model toward their own objective.

Client i runs tau_i steps of local SGD (momentum rho, optionally a proximal term mu as in FedProx) and sends its
normalised update d_i = (x - y_i) / |a_i|_1, where a_i weighs each step's gradient in x - y_i: |a_i|_1 = tau_i for
plain SGD, sum_{k=1..tau_i} (1 - rho^k) / (1 - rho) with momentum, sum_{k<tau_i} (1 - lr mu)^k with the proximal
term. The server steps with tau_eff sum_i p_i d_i, tau_eff = sum_i p_i |a_i|_1 and p_i the aggregator's weights
(the paper's choice of tau_eff; with equal a_i it is FedAvg exactly). The server checks each |a_i|_1 against the
most a client of its reported size can take, so a client lying about it can do no more than by lying about its
size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from .. import checks
from ..client.state import ClientState
from ..client.training import LocalSGD, SGDProgram, Trained
from ..types import Aggregate, Params, ServerState, Task, Update
from .base import Strategy, require_mean
from .fedprox import Proximal

NORMALISER = "normaliser"
"""The extra a client sends (its |a_i|_1) and the server keeps (the last round's tau_eff)."""


def normaliser(steps: int, momentum: float = 0.0, lr_mu: float = 0.0) -> float:
    """|a|_1 of tau = `steps` local steps with momentum rho or a proximal decay lr mu (FedNova, Section 4)."""
    if momentum and lr_mu:
        raise ValueError("FedNova's normaliser covers momentum or a proximal term, not both")
    if momentum:
        return (steps - momentum * (1 - momentum ** steps) / (1 - momentum)) / (1 - momentum)
    if lr_mu:
        return (1 - (1 - lr_mu) ** steps) / lr_mu
    return float(steps)


@dataclass(frozen=True)
class FedNova(Strategy):
    name: ClassVar[str] = "fednova"
    mu: float = 0.0
    """The proximal term of FedProx (0: none), which FedNova's normaliser accounts for."""

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.in_range(self, "mu", 0.0, float("inf"))
        if not isinstance(self.local, LocalSGD):
            checks.fail(self, "local", "FedNova's clients run local SGD: expected LocalSGD")
        local = self._local()
        if self.mu and local.momentum:
            checks.fail(self, "mu", "FedNova normalises local momentum or a proximal term, not both (set "
                                    "client.momentum = 0 or mu = 0)")
        if self.mu and local.lr * self.mu >= 1:
            checks.fail(self, "mu", f"client.lr * mu must be below 1 (it is {local.lr * self.mu:g}): each "
                                    "step would overshoot the global model")
        require_mean(self, "FedNova's tau_eff weighs the clients' normalisers as the mean weighs their updates",
                     private_ok=False)

    def _local(self) -> LocalSGD:
        assert isinstance(self.local, LocalSGD)  # __post_init__ checked it
        return self.local

    def norm_of(self, steps: int) -> float:
        local = self._local()
        return normaliser(steps, local.momentum, local.lr * self.mu)

    def most_steps(self, num_examples: int) -> int:
        """The steps a client of `num_examples` rows takes in full: the bound a reported normaliser must keep."""
        local = self._local()
        per_epoch = 1 if local.batch_size == "full" else math.ceil(num_examples / local.batch_size)
        return local.epochs * per_epoch

    def init(self, params: Params, seed: int) -> ServerState:
        state = super().init(params, seed)
        return replace(state, extras={NORMALISER: torch.zeros((), dtype=torch.float64)})

    def client_program(self, task: Task, state: ClientState) -> SGDProgram:
        program = super().client_program(task, state)
        return replace(program, penalty=Proximal(self.mu)) if self.mu else program

    def client_finish(self, task: Task, trained: Trained, state: ClientState) -> tuple[Update, ClientState]:
        update, _ = super().client_finish(task, trained, state)
        a = self.norm_of(trained.steps)
        return replace(update, params={k: v / a for k, v in update.params.items()},
                       extras={NORMALISER: torch.tensor(a, dtype=torch.float64)}), state

    def refuse(self, update: Update) -> str | None:
        a = update.extras.get(NORMALISER)
        if a is None or a.shape != () or not a.dtype.is_floating_point:
            return f"FedNova needs the update's {NORMALISER!r} as a float scalar"
        most = self.norm_of(self.most_steps(update.num_examples))
        if not 1.0 <= float(a) <= most * (1 + 1e-9):
            return (f"FedNova normaliser {float(a):.6g} is outside [1, {most:.6g}], the range for "
                    f"{update.num_examples} examples")
        return None

    def aggregate_extras(self, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        """tau_eff: the clients' normalisers weighted as the aggregator weighs their updates."""
        weights = self.aggregator.weights(updates)  # type: ignore[attr-defined]  # require_mean checked it
        tau = sum(w * float(u.extras[NORMALISER]) for u, w in zip(updates, weights, strict=True))
        return {NORMALISER: torch.tensor(tau, dtype=torch.float64)}

    def apply(self, state: ServerState, agg: Aggregate) -> ServerState:
        tau = float(agg.extras[NORMALISER])
        new = super().apply(state, replace(agg, params={k: v * tau for k, v in agg.params.items()}))
        return replace(new, extras={NORMALISER: agg.extras[NORMALISER]})
