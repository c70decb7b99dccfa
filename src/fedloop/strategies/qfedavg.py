"""q-FedAvg (Li, Sanjabi, Beirami and Smith, ICLR 2020, "Fair Resource Allocation in Federated Learning"): the
q-FFL objective sum_k F_k^(q+1) / (q+1) weighs clients with a higher loss more, which evens out accuracy across
clients; q = 0 is FedAvg's objective.

Client k measures its loss F_k at the global params w on its training data, runs local SGD to w_k, and sends
Delta_k = F_k^q L (w - w_k) with F_k as an extra. The server computes h_k = q F_k^(q-1) ||L (w - w_k)||^2 + L F_k^q
= q F_k^(-q-1) ||Delta_k||^2 + L F_k^q itself and steps w <- w - sum_k Delta_k / sum_k h_k (their Algorithm 2;
L, the Lipschitz estimate, is 1/lr unless set, and F_k gets 1e-10 added, both as in the authors' code). Because
the server derives h_k from the update it received, a client that lies about its loss or inflates its update gets
a larger h_k, and so a damped step, never an unbounded one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from .. import checks
from ..aggregators import Aggregator, WeightedMean
from ..client.evaluate import evaluate
from ..client.state import ClientState
from ..client.training import ClientContext, LocalSGD, Trained
from ..types import Aggregate, Params, ServerState, Task, Update
from .base import Strategy, require_mean

LOSS = "loss"
"""The extra a client sends (its F_k) and the server keeps (the last round's mean F_k)."""
TINY = 1e-10


@dataclass(frozen=True)
class QFedAvg(Strategy):
    name: ClassVar[str] = "qfedavg"
    aggregator: Aggregator = field(default_factory=lambda: WeightedMean("uniform"))
    q: float = 1.0
    lipschitz: float | None = None
    """L of the paper; None: 1 / client.lr, the authors' choice."""

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.in_range(self, "q", 0.0, float("inf"))
        if self.lipschitz is not None:
            checks.positive(self, "lipschitz")
        if not isinstance(self.local, LocalSGD):
            checks.fail(self, "local", "q-FedAvg's clients run local SGD: expected LocalSGD")
        require_mean(self, "q-FedAvg's server step divides the sum of the clients' updates by the sum of their "
                           "h_k", weighting="uniform", private_ok=False)

    @property
    def lipschitz_estimate(self) -> float:
        assert isinstance(self.local, LocalSGD)  # __post_init__ checked it
        return self.lipschitz if self.lipschitz is not None else 1.0 / self.local.lr

    def init(self, params: Params, seed: int) -> ServerState:
        state = super().init(params, seed)
        return replace(state, extras={LOSS: torch.zeros((), dtype=torch.float64)})

    def client_train(self, task: Task, ctx: ClientContext) -> Trained:
        """F_k at the global params on the client's training data, then the local SGD."""
        start = evaluate(ctx.model, task.params, ctx.train, ctx.loss_fn)["loss"]
        trained = super().client_train(task, ctx)
        return replace(trained, metrics={**trained.metrics, "start_loss": start})

    def client_finish(self, task: Task, trained: Trained, state: ClientState) -> tuple[Update, ClientState]:
        update, _ = super().client_finish(task, trained, state)
        f = float(trained.metrics["start_loss"])
        factor = (f + TINY) ** self.q * self.lipschitz_estimate
        return replace(update, params={k: v * factor for k, v in update.params.items()},
                       extras={LOSS: torch.tensor(f, dtype=torch.float64)}), state

    def refuse(self, update: Update) -> str | None:
        f = update.extras.get(LOSS)
        if f is None or f.shape != () or not f.dtype.is_floating_point:
            return f"q-FedAvg needs the update's {LOSS!r} as a float scalar"
        if not math.isfinite(float(f)) or float(f) < 0:
            return f"q-FedAvg loss {float(f)!r} is not a finite number >= 0"
        return None

    def h(self, update: Update) -> float:
        """h_k from the update the server holds and the loss the client reported."""
        f = float(update.extras[LOSS]) + TINY
        squared = sum(float(torch.sum(v.double() ** 2)) for v in update.params.values())
        return self.q * f ** (-self.q - 1) * squared + self.lipschitz_estimate * f ** self.q

    def aggregate_extras(self, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        return {"h": torch.tensor(math.fsum(self.h(u) for u in updates), dtype=torch.float64),
                LOSS: torch.tensor(math.fsum(float(u.extras[LOSS]) for u in updates) / len(updates),
                                   dtype=torch.float64)}

    def apply(self, state: ServerState, agg: Aggregate) -> ServerState:
        factor = agg.num_clients / float(agg.extras["h"])  # the uniform mean times C: the sum of the Delta_k
        new = super().apply(state, replace(agg, params={k: v * factor for k, v in agg.params.items()}))
        return replace(new, extras={LOSS: agg.extras[LOSS]})
