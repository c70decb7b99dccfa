"""The client app: one code path that turns a task into a reply, in simulation and in deployment."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .data.examples import Examples
from .local import ClientContext, LossFn, evaluate
from .strategies.base import Strategy
from .types import ClientInfo, Evaluation, Failure, Reply, Task

log = logging.getLogger(__name__)


@dataclass
class ClientApp:
    """A client's model factory, its local data and its persistent state.

    `handle` never raises: an exception in client code becomes a Failure naming the client and the error.
    """

    client_id: int
    strategy: Strategy
    model_fn: Callable[[], nn.Module]
    loss_fn: LossFn
    train: Examples
    test: Examples | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def info(self) -> ClientInfo:
        return ClientInfo(self.client_id, len(self.train))

    def handle(self, task: Task, model: nn.Module | None = None) -> Reply:
        """Run one task on `model` (a reusable workspace; built from model_fn when not given)."""
        try:
            if task.client_id != self.client_id:
                raise ValueError(f"task for client {task.client_id} sent to client {self.client_id}")
            model = model if model is not None else self.model_fn()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(task.seed)
                if task.kind == "evaluate":
                    if self.test is None or len(self.test) == 0:
                        raise ValueError("client has no local test split")
                    metrics = evaluate(model, task.params, self.test, self.loss_fn)
                    return Evaluation(self.client_id, task.round, len(self.test), metrics)
                if len(self.train) == 0:
                    raise ValueError("client has no training examples")
                ctx = ClientContext(model, self.train, self.loss_fn, self.state)
                return self.strategy.local_update(task, ctx)
        except Exception as exc:  # noqa: BLE001 - any client error becomes a Failure value
            log.warning("client %d failed in round %d: %s", self.client_id, task.round, exc)
            return Failure(self.client_id, task.round, f"{type(exc).__name__}: {exc}")
