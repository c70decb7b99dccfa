"""Local training, the only thing executors do: the local-training specs (a strategy's client half as data) and
the per-client path itself (the program and its SGD step are client/program.py, shared with DP-SGD and the
batched path).

Training runs on a workspace model: the global params are copied into it first, so a client never aliases them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from .. import checks
from ..data.examples import Examples
from ..params import load_into, named_tensors
from ..types import Params, Task
from .dpsgd import train_dp
from .evaluate import Tally
from .program import LossFn, SGDProgram, sgd_step


@dataclass(frozen=True)
class LocalSGD:
    """The local-training spec of the FedAvg family (config section [client]): `epochs` epochs of minibatch SGD
    with batches of `batch_size` rows ("full": the whole local set), step size `lr`, momentum, weight decay."""

    epochs: int = 5
    batch_size: int | Literal["full"] = 10
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        checks.at_least(self, "epochs", 1)
        if self.batch_size != "full":
            checks.at_least(self, "batch_size", 1)
        checks.positive(self, "lr")
        checks.in_range(self, "momentum", 0.0, 1.0)
        checks.in_range(self, "weight_decay", 0.0, float("inf"))

    def program(self) -> SGDProgram:
        return SGDProgram(epochs=self.epochs, batch_size=None if self.batch_size == "full" else self.batch_size,
                          lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class FullGradient:
    """The local-training spec of FedSGD: one full-batch gradient (1/N) sum grad L at the global params."""

    def program(self) -> SGDProgram:
        return SGDProgram(epochs=1, batch_size=None, returns="gradient")


LocalSpec = LocalSGD | FullGradient


@dataclass(frozen=True)
class Trained:
    """What local training produced for one client: its update (W_global - W_local, or the full-batch gradient,
    as the program declares), the examples and steps it took, and its training metrics."""

    update: Params
    num_examples: int
    steps: int
    metrics: Mapping[str, float]
    extras: Params = field(default_factory=dict)
    """What the strategy's own client training produced beside the update, for its client_finish (Ditto's
    personal model)."""


@dataclass
class ClientContext:
    """What a strategy's own client training may use: a workspace model, the client's data, its loss, and its
    persistent state (read-only: the strategy returns a new state from client_finish)."""

    model: nn.Module
    train: Examples
    loss_fn: LossFn
    state: Mapping[str, torch.Tensor] = field(default_factory=dict)


def train_program(program: SGDProgram, task: Task, ctx: ClientContext) -> Trained:
    """The per-client execution of an SGDProgram (the batched one is sim/vectorized.py)."""
    if program.clip is not None:
        update, steps, metrics = train_dp(program, task, ctx.model, ctx.train, ctx.loss_fn)
        return Trained(update, len(ctx.train), steps, metrics)
    if program.returns == "gradient":
        return full_gradient(ctx, task.params)
    model, steps, tally = _sgd(program, task, ctx, task.seed, program.max_steps)
    local = dict(named_tensors(model))
    update = {k: g - local[k].detach() for k, g in task.params.items()}
    return Trained(update, len(ctx.train), steps, tally.metrics("train_"))


def sgd_steps(program: SGDProgram, task: Task, ctx: ClientContext, steps: int, seed: int) -> Params:
    """The params after `steps` steps of the program's SGD from task.params on the client's batches (epochs repeat
    as needed; batches drawn from `seed`): local fine-tuning before an evaluation."""
    model, _, _ = _sgd(replace(program, epochs=steps), task, ctx, seed, steps)  # an epoch takes at least a step
    return {k: v.detach().clone() for k, v in named_tensors(model)}


def _sgd(program: SGDProgram, task: Task, ctx: ClientContext, seed: int, max_steps: int | None = None
         ) -> tuple[nn.Module, int, Tally]:
    """The program's epochs of SGD from task.params on the workspace model, stopping after `max_steps` steps when
    set: the trained model, the steps taken and the training tally."""
    model = ctx.model
    load_into(model, task.params)
    model.train()
    trainable = dict(model.named_parameters())
    tensors = list(trainable.values())
    buffers: list[torch.Tensor | None] = [None] * len(tensors)
    gen = torch.Generator().manual_seed(seed)
    tally = Tally()
    steps = 0
    for _ in range(program.epochs):
        for xb, yb in ctx.train.batches(program.batch_size, gen):
            if steps == max_steps:
                return model, steps, tally
            for p in tensors:
                p.grad = None
            out = model(xb)
            loss = ctx.loss_fn(out, yb)
            total = loss if program.penalty is None else loss + program.penalty(trainable, task.params, program.aux)
            total.backward()
            sgd_step(tensors, [p.grad for p in tensors], buffers, program)
            tally.add(loss, out, yb)
            steps += 1
    return model, steps, tally


def full_gradient(ctx: ClientContext, params: Params, chunk_size: int = 4096) -> Trained:
    """(1/N) sum_i grad L(W, x_i, y_i) over the client's whole data, computed in chunks."""
    model = ctx.model
    load_into(model, params)
    model.train()
    model.zero_grad(set_to_none=True)
    n = len(ctx.train)
    tally = Tally()
    for xb, yb in ctx.train.batches(chunk_size, None):
        out = model(xb)
        loss = ctx.loss_fn(out, yb)
        (loss * (len(yb) / n)).backward()
        tally.add(loss, out, yb)
    grads = {name: t.grad.detach().clone() if t.grad is not None else torch.zeros_like(t)
             for name, t in named_tensors(model)}  # buffers have no gradient: zeros
    return Trained({k: grads[k] for k in params}, n, 1, tally.metrics("train_"))
