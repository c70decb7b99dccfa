"""Evaluation of params on a client's (or the server's) examples, and the running tally both it and local
training keep."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.examples import Examples
from ..params import load_into
from ..types import Params


@dataclass
class Tally:
    """Example-weighted running loss and, while every output is a row of class scores, accuracy."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0
    scored: bool = True

    pending: list[tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=list)
    """An accelerator's sums not yet read (reading one waits for the device: once, at the end)."""

    def add(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        n = len(targets)
        self.seen += n
        self.scored = self.scored and outputs.dim() == 2 and targets.dim() == 1 \
            and not targets.is_floating_point()
        correct = (outputs.detach().argmax(dim=1) == targets).sum() if self.scored else None
        if loss.device.type != "cpu":
            self.pending.append((loss.detach().double() * n, correct))
            return
        self.loss_sum += loss.item() * n
        if correct is not None:
            self.correct += float(correct)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        if self.pending:
            self.loss_sum += float(sum(loss for loss, _ in self.pending))
            self.correct += float(sum(c for _, c in self.pending if c is not None))
            self.pending = []
        out = {f"{prefix}loss": self.loss_sum / max(self.seen, 1)}
        if self.scored and self.seen:
            out[f"{prefix}accuracy"] = self.correct / self.seen
        return out


@torch.no_grad()
def evaluate(model: nn.Module, params: Params, data: Examples,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             chunk_size: int = 4096) -> dict[str, float]:
    """Mean loss and (for classifiers) accuracy of `params` on `data`."""
    load_into(model, params)
    model.eval()
    tally = Tally()
    for xb, yb in data.batches(chunk_size, None):
        out = model(xb)
        tally.add(loss_fn(out, yb), out, yb)
    return tally.metrics()
