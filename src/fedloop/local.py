"""Client-side computations shared by strategies: local SGD, full-batch gradients and evaluation.

They run on a workspace model: global params are copied into it first, so a client never aliases them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .data.examples import Examples
from .params import from_model, load_into
from .types import Params

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""loss(outputs, targets) -> mean loss over the batch."""

ExtraLoss = Callable[[nn.Module], torch.Tensor]


@dataclass
class ClientContext:
    """What the client half of a strategy may use: its workspace model, its data, its persistent state."""

    model: nn.Module
    train: Examples
    loss_fn: LossFn
    state: dict[str, torch.Tensor] = field(default_factory=dict)


def accuracy_sum(outputs: torch.Tensor, targets: torch.Tensor) -> float | None:
    """Number of correct argmax predictions, or None where outputs are not class scores."""
    if outputs.dim() != 2 or targets.dim() != 1 or targets.is_floating_point():
        return None
    return float((outputs.argmax(dim=1) == targets).sum())


def local_sgd(ctx: ClientContext, params: Params, *, epochs: int, batch_size: int | None, lr: float,
              momentum: float, weight_decay: float, seed: int,
              extra_loss: ExtraLoss | None = None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Run `epochs` epochs of minibatch SGD from `params`; return the trained params and train metrics."""
    model = ctx.model
    load_into(model, params)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    loss_sum, correct, seen, scored = 0.0, 0.0, 0, True
    for _ in range(epochs):
        for xb, yb in ctx.train.batches(batch_size, gen):
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = ctx.loss_fn(out, yb)
            total = loss if extra_loss is None else loss + extra_loss(model)
            total.backward()
            opt.step()
            loss_sum += loss.item() * len(yb)
            seen += len(yb)
            c = accuracy_sum(out.detach(), yb)
            scored = scored and c is not None
            correct += c or 0.0
    metrics = {"train_loss": loss_sum / max(seen, 1)}
    if scored and seen:
        metrics["train_accuracy"] = correct / seen
    return from_model(model), metrics


def full_gradient(ctx: ClientContext, params: Params, chunk_size: int = 4096
                  ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(1/N) sum_i grad L(W, x_i, y_i) over the client's whole data, computed in chunks."""
    model = ctx.model
    load_into(model, params)
    model.train()
    model.zero_grad(set_to_none=True)
    n = len(ctx.train)
    loss_sum, correct, scored = 0.0, 0.0, True
    for xb, yb in ctx.train.batches(chunk_size, None):
        out = model(xb)
        loss = ctx.loss_fn(out, yb)
        (loss * (len(yb) / n)).backward()
        loss_sum += loss.item() * len(yb)
        c = accuracy_sum(out.detach(), yb)
        scored = scored and c is not None
        correct += c or 0.0
    grads = {}
    for name, p in model.named_parameters():
        grads[name] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    for name, b in model.named_buffers():
        if b.is_floating_point():
            grads[name] = torch.zeros_like(b)
    grads = {k: grads[k] for k in params}
    metrics = {"train_loss": loss_sum / n}
    if scored:
        metrics["train_accuracy"] = correct / n
    return grads, metrics


@torch.no_grad()
def evaluate(model: nn.Module, params: Params, data: Examples, loss_fn: LossFn,
             chunk_size: int = 4096) -> dict[str, float]:
    """Mean loss and (for classifiers) accuracy of `params` on `data`."""
    load_into(model, params)
    model.eval()
    loss_sum, correct, scored = 0.0, 0.0, True
    for xb, yb in data.batches(chunk_size, None):
        out = model(xb)
        loss_sum += float(loss_fn(out, yb)) * len(yb)
        c = accuracy_sum(out, yb)
        scored = scored and c is not None
        correct += c or 0.0
    n = max(len(data), 1)
    metrics = {"loss": loss_sum / n}
    if scored:
        metrics["accuracy"] = correct / n
    return metrics

