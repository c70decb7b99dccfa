"""Client-side computations shared by strategies: local SGD, full-batch gradients and evaluation.

They run on a workspace model: global params are copied into it first, so a client never aliases them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .data.examples import Examples
from .params import from_model, load_into, named_tensors, sub
from .types import Params, Task, Update

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""loss(outputs, targets) -> mean loss over the batch."""

Penalty = Callable[[Params, Params], torch.Tensor]
"""penalty(trainable params, global params) -> a scalar added to every step's loss (e.g. FedProx)."""


@dataclass(frozen=True)
class SGDProgram:
    """A client half that is local SGD on the mean minibatch loss, declared as data.

    returns="delta": `epochs` epochs of SGD (torch.optim.SGD semantics) from the global params on batches
    of `batch_size` (None: the whole local set) drawn from the task seed; the update is W_global - W_local.
    returns="gradient": the full-batch gradient (1/N) sum grad L at the global params (epochs/lr unused).
    Because it is data, every executor can run it: one client at a time or many at once (torch.func).
    """

    epochs: int = 1
    batch_size: int | None = 10
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    penalty: Penalty | None = None
    returns: Literal["delta", "gradient"] = "delta"


@dataclass
class ClientContext:
    """What the client half of a strategy may use: its workspace model, its data, its persistent state."""

    model: nn.Module
    train: Examples
    loss_fn: LossFn
    state: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Tally:
    """Example-weighted running loss and, while every output is a row of class scores, accuracy."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0
    scored: bool = True

    def add(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        n = len(targets)
        self.loss_sum += loss.item() * n
        self.seen += n
        self.scored = self.scored and outputs.dim() == 2 and targets.dim() == 1 \
            and not targets.is_floating_point()
        if self.scored:
            self.correct += float((outputs.detach().argmax(dim=1) == targets).sum())

    def metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}loss": self.loss_sum / max(self.seen, 1)}
        if self.scored and self.seen:
            out[f"{prefix}accuracy"] = self.correct / self.seen
        return out


def run_program(program: SGDProgram, task: Task, ctx: ClientContext) -> Update:
    """The sequential reference execution of an SGDProgram for one client."""
    if program.returns == "gradient":
        out, metrics = full_gradient(ctx, task.params)
    else:
        trained, metrics = local_sgd(ctx, task.params, epochs=program.epochs, batch_size=program.batch_size,
                                     lr=program.lr, momentum=program.momentum,
                                     weight_decay=program.weight_decay, seed=task.seed, penalty=program.penalty)
        out = sub(task.params, trained)
    return Update(task.client_id, task.round, out, len(ctx.train), metrics)


def local_sgd(ctx: ClientContext, params: Params, *, epochs: int, batch_size: int | None, lr: float,
              momentum: float, weight_decay: float, seed: int,
              penalty: Penalty | None = None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Run `epochs` epochs of minibatch SGD from `params`; return the trained params and train metrics."""
    model = ctx.model
    load_into(model, params)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    trainable = dict(model.named_parameters())
    tally = Tally()
    for _ in range(epochs):
        for xb, yb in ctx.train.batches(batch_size, gen):
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = ctx.loss_fn(out, yb)
            total = loss if penalty is None else loss + penalty(trainable, params)
            total.backward()
            opt.step()
            tally.add(loss, out, yb)
    return from_model(model), tally.metrics("train_")


def full_gradient(ctx: ClientContext, params: Params, chunk_size: int = 4096
                  ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
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
    return {k: grads[k] for k in params}, tally.metrics("train_")


@torch.no_grad()
def evaluate(model: nn.Module, params: Params, data: Examples, loss_fn: LossFn,
             chunk_size: int = 4096) -> dict[str, float]:
    """Mean loss and (for classifiers) accuracy of `params` on `data`."""
    load_into(model, params)
    model.eval()
    tally = Tally()
    for xb, yb in data.batches(chunk_size, None):
        out = model(xb)
        tally.add(loss_fn(out, yb), out, yb)
    return tally.metrics()

