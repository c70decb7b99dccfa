"""Local training, the only thing executors do: the local-training specs (a strategy's client half as data), the
one functional SGD step both the per-client and the batched path use, and the per-client path itself.

Training runs on a workspace model: the global params are copied into it first, so a client never aliases them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .. import checks
from ..data.examples import Examples
from ..params import load_into, named_tensors
from ..types import Params, Task
from .dpsgd import train_dp
from .evaluate import Tally

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""loss(outputs, targets) -> mean loss over the batch."""

Penalty = Callable[[Params, Params, Params], torch.Tensor]
"""penalty(trainable params, global params, aux) -> a scalar added to every step's loss (FedProx, SCAFFOLD);
`aux` holds the client's own tensors (SGDProgram.aux)."""


@dataclass(frozen=True)
class SGDProgram:
    """A client half that is local SGD on the mean minibatch loss, declared as data, so that any executor can
    run it: one client at a time, or many clients as one batched computation.

    returns="delta": `epochs` epochs of SGD (torch.optim.SGD semantics) from the global params on batches of
    `batch_size` (None: the whole local set) drawn from the task seed; the update is W_global - W_local.
    returns="gradient": the full-batch gradient (1/N) sum grad L at the global params (epochs and lr unused).
    `aux` are per-client tensors passed to the penalty; they are not part of the program's identity, so clients
    that differ only in them still train as one batch.
    """

    epochs: int = 1
    batch_size: int | None = 10
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    penalty: Penalty | None = None
    returns: Literal["delta", "gradient"] = "delta"
    aux: Params = field(default_factory=dict, compare=False)
    clip: float | None = None
    """DP-SGD: each example's gradient is clipped to this L2 norm, and batches are drawn independently per step
    (client/dpsgd.py); None: plain SGD."""
    noise_multiplier: float = 0.0
    """DP-SGD: the noise added to a step's sum of clipped gradients has standard deviation noise_multiplier * clip."""
    secure_noise: bool = True
    """DP-SGD: batches and noise from this process's secret stream (fedloop/randomness.py); False: from the task
    seed (reproducible, and so not private against whoever knows the seed)."""


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


@dataclass
class ClientContext:
    """What a strategy's own client training may use: a workspace model, the client's data, its loss, and its
    persistent state (read-only: the strategy returns a new state from client_finish)."""

    model: nn.Module
    train: Examples
    loss_fn: LossFn
    state: Mapping[str, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def sgd_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None],
             buffers: list[torch.Tensor | None], program: SGDProgram) -> None:
    """One step of torch.optim.SGD (dampening 0, no Nesterov), in place, on plain or client-stacked tensors.

    A None gradient skips its tensor, as torch.optim.SGD does. A momentum buffer starts as the first gradient;
    a zero buffer gives the same bits (0 * m + g = g), which is how the batched path starts its stacked buffers.
    """
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if g is None:
            continue
        if program.weight_decay:
            g = g.add(p, alpha=program.weight_decay)
        if program.momentum:
            buf = buffers[i]
            if buf is None:
                buffers[i] = buf = g.clone()
            else:
                buf.mul_(program.momentum).add_(g)
            g = buf
        p.add_(g, alpha=-program.lr)


def train_program(program: SGDProgram, task: Task, ctx: ClientContext) -> Trained:
    """The per-client execution of an SGDProgram (the batched one is sim/vectorized.py)."""
    if program.clip is not None:
        update, steps, metrics = train_dp(program, task, ctx.model, ctx.train, ctx.loss_fn)
        return Trained(update, len(ctx.train), steps, metrics)
    if program.returns == "gradient":
        return full_gradient(ctx, task.params)
    model = ctx.model
    load_into(model, task.params)
    model.train()
    trainable = dict(model.named_parameters())
    tensors = list(trainable.values())
    buffers: list[torch.Tensor | None] = [None] * len(tensors)
    gen = torch.Generator().manual_seed(task.seed)
    tally = Tally()
    steps = 0
    for _ in range(program.epochs):
        for xb, yb in ctx.train.batches(program.batch_size, gen):
            for p in tensors:
                p.grad = None
            out = model(xb)
            loss = ctx.loss_fn(out, yb)
            total = loss if program.penalty is None else loss + program.penalty(trainable, task.params, program.aux)
            total.backward()
            sgd_step(tensors, [p.grad for p in tensors], buffers, program)
            tally.add(loss, out, yb)
            steps += 1
    local = dict(named_tensors(model))
    update = {k: g - local[k].detach() for k, g in task.params.items()}
    return Trained(update, len(ctx.train), steps, tally.metrics("train_"))


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
