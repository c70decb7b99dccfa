"""Closed-form gradients of dense softmax classifiers (Linear and ReLU layers, cross-entropy), batched over clients.

For such a model a batched step is a few `bmm` calls each way. Through vmap and autograd the same step dispatches
some 60 small operations, and at the sizes of many small clients that dispatch costs about three times the
arithmetic (benchmarks/RESULTS.md, issue 24). The vectorized executor uses these gradients when it recognises the
model and autograd otherwise; tests/test_dense.py holds the two equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from ..models import MLP, LogReg


@dataclass(frozen=True)
class DenseLayer:
    """One Linear layer by its param names, and whether a ReLU follows it."""

    weight: str
    bias: str | None
    relu: bool


def dense_layers(model: nn.Module, loss_fn: Callable) -> list[DenseLayer] | None:
    """The model as a stack of dense layers when it is one this module differentiates (fedloop's `logreg` and
    `mlp`, or an nn.Sequential of Flatten, Linear and ReLU) and the loss is F.cross_entropy; None otherwise."""
    if loss_fn is not F.cross_entropy:
        return None
    if type(model) is LogReg:
        return [DenseLayer("linear.weight", None if model.linear.bias is None else "linear.bias", False)]
    if type(model) is MLP:
        return _sequential(model.net, "net.")
    if type(model) is nn.Sequential:
        return _sequential(model, "")
    return None


def closed_form(model: nn.Module, loss_fn: Callable, labels: torch.Tensor) -> list[DenseLayer] | None:
    """The dense layers the vectorized executor differentiates in closed form for this model, loss and labels (one
    integer class per row); None when it goes through autograd."""
    if labels.dim() != 1 or labels.is_floating_point():
        return None
    return dense_layers(model, loss_fn)


def _sequential(seq: nn.Sequential, prefix: str) -> list[DenseLayer] | None:
    modules = list(seq.named_children())
    if not modules or type(modules[0][1]) is not nn.Flatten or \
            (modules[0][1].start_dim, modules[0][1].end_dim) != (1, -1):
        return None  # the input's rows must be flattened first, as the batched step does
    layers: list[DenseLayer] = []
    for name, m in modules[1:]:
        if type(m) is nn.Linear:
            layers.append(DenseLayer(f"{prefix}{name}.weight", None if m.bias is None else f"{prefix}{name}.bias",
                                     False))
        elif type(m) is nn.ReLU and layers and not layers[-1].relu:
            layers[-1] = replace(layers[-1], relu=True)
        else:
            return None
    return layers if layers and not layers[-1].relu else None


def loss_grads(layers: list[DenseLayer], params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               weights: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """For stacked clients (params [clients, ...], x [clients, batch, ...], integer labels y [clients, batch]):
    the gradient of sum over clients and rows of weights * cross-entropy, each row's cross-entropy [clients,
    batch], and the logits [clients, batch, classes]."""
    h = x.flatten(2)
    inputs = []
    for layer in layers:
        inputs.append(h)
        w = params[layer.weight].transpose(1, 2)
        h = torch.bmm(h, w) if layer.bias is None else torch.baddbmm(params[layer.bias].unsqueeze(1), h, w)
        if layer.relu:
            h = h.relu()
    logits = h
    z = logits - logits.amax(dim=2, keepdim=True)
    e = z.exp()
    total = e.sum(dim=2, keepdim=True)
    target = y.unsqueeze(2)
    row_losses = (total.log() - z.gather(2, target)).squeeze(2)
    g = e.div_(total)  # softmax; minus the one-hot target, times each row's weight: d loss / d logits
    g.scatter_add_(2, target, torch.full_like(target, -1, dtype=g.dtype))
    g.mul_(weights.unsqueeze(2))
    grads: dict[str, torch.Tensor] = {}
    for i in range(len(layers) - 1, -1, -1):
        layer, a = layers[i], inputs[i]
        grads[layer.weight] = torch.bmm(g.transpose(1, 2), a)
        if layer.bias is not None:
            grads[layer.bias] = g.sum(dim=1)
        if i:
            g = torch.bmm(g, params[layer.weight])
            if layers[i - 1].relu:
                g = g.mul_(a > 0)
    return grads, row_losses, logits
