"""The client app: the one code path that turns a task into a reply, in simulation and in deployment.

Executors only train (`fit`, or a batched equivalent); everything after training goes through `finish`, in every
executor, in Ray actors' drivers and in the networked client process alike: the strategy's client finish (e.g.
SCAFFOLD's control-variate step), the client-side transforms in order, and the commit of the client's state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..data.examples import Examples
from ..device import CPU, on_cpu, place_examples, place_task, seeded, to_cpu, to_device
from ..sampling import sub_seed
from ..secagg import client as secagg
from ..types import ClientInfo, Evaluation, Failure, Message, Reply, Task, Update
from .evaluate import evaluate
from .state import ClientState, RoundStates
from .training import ClientContext, LossFn, Trained, sgd_steps

if TYPE_CHECKING:
    from ..strategies.base import Strategy

log = logging.getLogger(__name__)

FINE_TUNE = 1_000_002
"""The sub-seed of an evaluate task's seed that orders the batches of its local fine-tuning."""


@dataclass
class ClientApp:
    """A client's model factory, its local data, and its state store (round-versioned, see client/state.py).

    No method raises: an exception in client code becomes a Failure naming the client and the error.
    """

    client_id: int
    strategy: Strategy
    model_fn: Callable[[], nn.Module]
    loss_fn: LossFn
    train: Examples
    test: Examples | None = None
    states: RoundStates = field(default_factory=RoundStates)
    sessions: secagg.Sessions = field(default_factory=dict)
    """Secure aggregation's per-round secrets, in this process's memory only (secagg/client.py)."""
    device: torch.device = CPU
    """Where this client trains and evaluates (fedloop/device.py): its model, data, task and state move there for
    the task; its reply and its committed state come back on the CPU."""

    def info(self) -> ClientInfo:
        return ClientInfo(self.client_id, len(self.train))

    def begin(self, task: Task) -> ClientState:
        """The state a fit task starts from: the one the client had before this round, if it answered it already."""
        return self.states.start(self.client_id, task.round)

    def workspace(self) -> nn.Module:
        """A fresh model on this client's device."""
        return self.model_fn().to(self.device)

    def _check(self, task: Task) -> None:
        if task.client_id != self.client_id:
            raise ValueError(f"task for client {task.client_id} sent to client {self.client_id}")

    def fit(self, task: Task, state: ClientState, model: nn.Module | None = None) -> Trained | Failure:
        """Local training only, on `model` (a reusable workspace; built from model_fn when not given)."""
        try:
            self._check(task)
            if len(self.train) == 0:
                raise ValueError("client has no training examples")
            ctx = ClientContext(model if model is not None else self.workspace(),
                                place_examples(self.train, self.device), self.loss_fn, to_device(state, self.device))
            with seeded(task.seed, self.device):
                return self.strategy.client_train(place_task(task, self.device), ctx)
        except Exception as exc:  # noqa: BLE001 - any client error becomes a Failure value
            return self._failure(task, exc)

    def finish(self, task: Task, trained: Trained, state: ClientState) -> Update | Message | Failure:
        """Everything after training: the strategy's client finish, client transforms, the state commit; under
        secure aggregation, the update goes back masked (a Message). The client's device does the work; the reply
        and the committed state are CPU tensors."""
        try:
            placed = to_device(state, self.device)
            if not on_cpu(self.device):  # a worker process's or Ray actor's result arrives on the CPU
                trained = replace(trained, update=to_device(trained.update, self.device),
                                  extras=to_device(trained.extras, self.device))
            update, new_state = self.strategy.client_finish(place_task(task, self.device), trained, placed)
            if self.strategy.transforms:
                params, metrics = dict(update.params), dict(update.metrics)
                for i, transform in enumerate(self.strategy.transforms):
                    params, more = transform.client(task, params, sub_seed(task.seed, i))
                    metrics.update(more)
                update = Update(update.client_id, update.round, params, update.num_examples, metrics,
                                update.extras, update.version)
            if not on_cpu(self.device):
                update = Update(update.client_id, update.round, to_cpu(update.params), update.num_examples,
                                update.metrics, to_cpu(update.extras), update.version)
            reply: Update | Message = update
            if secagg.is_masked(task):
                reply = Message(self.client_id, task.round, task.broadcast.stage,
                                secagg.masked_update(task, update.params, update.metrics.get("train_loss"),
                                                     update.num_examples, self.sessions))
            elif self.strategy.secure is not None:
                raise ValueError("the run uses secure aggregation, but this fit task asks for a plain update")
            if new_state is not placed:
                self.states.commit(self.client_id, task.round, state, to_cpu(new_state))
            return reply
        except Exception as exc:  # noqa: BLE001
            return self._failure(task, exc)

    def evaluate(self, task: Task, model: nn.Module | None = None, state: ClientState | None = None
                 ) -> Evaluation | Failure:
        """Metrics of the task's params on the local test split (or the train split, with config split=train), with
        the strategy's personal metrics from the client's newest `state` (read from its store when not given), and
        with config fine_tune_steps = k those of the params after k local SGD steps (fine_tuned_*)."""
        try:
            self._check(task)
            split = task.config.get("split", "test")
            if split not in ("test", "train"):
                raise ValueError(f"unknown split {split!r} (expected 'test' or 'train')")
            data = self.test if split == "test" else self.train
            if data is None or len(data) == 0:  # nothing to measure is not a failure: it counts for nothing
                return Evaluation(self.client_id, task.round, 0, {})
            if state is None:
                state = self.states.latest(self.client_id) if self.strategy.evaluates_state else {}
            data = place_examples(data, self.device)
            task = place_task(task, self.device)
            ctx = ClientContext(model if model is not None else self.workspace(),
                                place_examples(self.train, self.device), self.loss_fn, to_device(state, self.device))
            metrics = self.strategy.client_evaluate(task, ctx, data)
            steps = task.config.get("fine_tune_steps", 0)
            if not isinstance(steps, int) or steps < 0:
                raise ValueError(f"fine_tune_steps = {steps!r}: expected an integer >= 0")
            if steps:
                tuned = sgd_steps(self.strategy.local.program(), task, ctx, steps, sub_seed(task.seed, FINE_TUNE))
                tuned_metrics = evaluate(ctx.model, tuned, data, self.loss_fn)
                metrics.update({f"fine_tuned_{k}": v for k, v in tuned_metrics.items()})
            return Evaluation(self.client_id, task.round, len(data), metrics)
        except Exception as exc:  # noqa: BLE001
            return self._failure(task, exc)

    def answer(self, task: Task) -> Message | Failure:
        """A secure-aggregation stage that involves no training (advertise keys, share them, unmask)."""
        try:
            self._check(task)
            return Message(self.client_id, task.round, task.broadcast.stage, secagg.answer(task, self.sessions))
        except Exception as exc:  # noqa: BLE001
            return self._failure(task, exc)

    def handle(self, task: Task, model: nn.Module | None = None) -> Reply:
        """A whole task on this client: train then finish, evaluate, or answer a protocol stage."""
        if task.kind == "evaluate":
            return self.evaluate(task, model)
        if task.kind == "secagg":
            return self.answer(task)
        state = self.begin(task)
        trained = self.fit(task, state, model)
        return trained if isinstance(trained, Failure) else self.finish(task, trained, state)

    def _failure(self, task: Task, exc: Exception) -> Failure:
        log.warning("client %d failed in round %d: %s", self.client_id, task.round, exc)
        return Failure(self.client_id, task.round, f"{type(exc).__name__}: {exc}")
