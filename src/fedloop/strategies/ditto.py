"""Ditto (Li, Hu, Beirami and Smith, ICML 2021, "Ditto: Fair and Robust Federated Learning Through
Personalization"): FedAvg for the global model, and beside it a personal model per client, trained on the client's
own data with a proximal pull lam/2 ||v - w_global||^2 toward the global model. The personal models never leave
their clients; federated evaluation reports their accuracy (personal_*) beside the global model's.

A client asked in round t trains the global model as FedAvg does (its update is the usual delta) and then takes
`personal_epochs` epochs of SGD (client.lr, client.batch_size, batches drawn from its own sub-seed of the task's)
on F_k(v) + lam/2 ||v - w^t||^2 from its personal model v_k (their Algorithm 1). A client that has no personal model
yet starts it from w^t, the model it was sent. The personal model is client state: kept with the round it came
from, checkpointed in simulation, on the client's disk in deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, cast

import torch

from .. import checks
from ..client.evaluate import evaluate
from ..client.state import ClientState
from ..client.training import ClientContext, LocalSGD, Trained, train_program
from ..data.examples import Examples
from ..sampling import sub_seed
from ..types import Broadcast, Params, Task, Update
from .base import Strategy

PERSONAL = 1_000_001
"""The sub-seed of a fit task's seed that orders the batches of the personal model's training (apart from the
transforms' sub-seeds, which count from 0)."""


@dataclass(frozen=True)
class PersonalPull:
    """lam/2 ||v - w_global||^2, with w_global passed as the program's aux (the program starts from v)."""

    lam: float

    def __call__(self, params: Params, start: Params, aux: Params) -> torch.Tensor:
        return cast(torch.Tensor, 0.5 * self.lam * sum(((p - aux[k]) ** 2).sum() for k, p in params.items()))


@dataclass(frozen=True)
class Ditto(Strategy):
    name: ClassVar[str] = "ditto"
    lam: float = 0.1
    personal_epochs: int | None = None
    """Epochs of the personal model's training in a round; None: client.epochs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.in_range(self, "lam", 0.0, float("inf"))
        checks.at_least(self, "personal_epochs", 1, optional=True)
        if not isinstance(self.local, LocalSGD):
            checks.fail(self, "local", "Ditto's clients run local SGD: expected LocalSGD")

    @staticmethod
    def personal(task: Task, state: ClientState) -> dict[str, torch.Tensor]:
        """The client's personal model: its state, or the global params it was sent when it has none yet."""
        return {k: state[k] if k in state else v for k, v in task.params.items()}

    def client_train(self, task: Task, ctx: ClientContext) -> Trained:
        """The global model's local training (FedAvg's), then the personal model's."""
        trained = super().client_train(task, ctx)
        v = self.personal(task, ctx.state)
        program = self.local.program()
        if self.personal_epochs is not None:
            program = replace(program, epochs=self.personal_epochs)
        program = replace(program, penalty=PersonalPull(self.lam), aux=dict(task.params))
        own = replace(task, broadcast=Broadcast(task.broadcast.version, v, {}, "personal"),
                      seed=sub_seed(task.seed, PERSONAL))
        tuned = train_program(program, own, ctx)
        personal = {k: v[k] - tuned.update[k] for k in v}
        metrics = {**trained.metrics, **{f"personal_{k}": x for k, x in tuned.metrics.items()}}
        return replace(trained, metrics=metrics, extras=personal)

    def client_finish(self, task: Task, trained: Trained, state: ClientState) -> tuple[Update, ClientState]:
        update, _ = super().client_finish(task, trained, state)
        return update, dict(trained.extras)

    def client_evaluate(self, task: Task, ctx: ClientContext, data: Examples) -> dict[str, float]:
        metrics = super().client_evaluate(task, ctx, data)
        personal = evaluate(ctx.model, self.personal(task, ctx.state), data, ctx.loss_fn)
        return {**metrics, **{f"personal_{k}": v for k, v in personal.items()}}
