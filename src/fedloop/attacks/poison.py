"""Data poisoning for malicious clients: flipped labels, or a backdoor trigger with a target label, on copies of
their own rows only (the shared arrays of honest clients are never touched)."""

from __future__ import annotations

import torch

from ..data.examples import Examples
from .options import AttackOptions


def add_trigger(x: torch.Tensor, value: float) -> torch.Tensor:
    """x with the backdoor pattern: a 3 x 3 patch in the bottom-right corner of an image (its last two dims), or
    the last 3 features of a vector, set to `value`."""
    out = x.clone()
    if out.dim() >= 3:
        out[..., -3:, -3:] = value
    else:
        out[..., -3:] = value
    return out


def poisoned(examples: Examples, options: AttackOptions, num_classes: int, client_id: int, high: float) -> Examples:
    """A malicious client's own rows, poisoned as its attack says (unchanged for the attacks on uploads)."""
    x, y = examples.x[examples.index].clone(), examples.y[examples.index].clone()
    if options.kind == "label_flip":
        y = num_classes - 1 - y
    elif options.kind == "backdoor":
        gen = torch.Generator().manual_seed(options.seed * 1_000_003 + client_id)
        rows = torch.randperm(len(y), generator=gen)[:max(1, round(options.poison_fraction * len(y)))]
        x[rows] = add_trigger(x[rows], high)
        y[rows] = options.target
    else:
        return examples
    return Examples.all(x, y)


@torch.no_grad()
def backdoor_success(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, target: int, high: float) -> float:
    """The fraction of test rows not of the target class that the model puts in the target class once
    triggered (the attack success rate)."""
    keep = y != target
    if not bool(keep.any()):
        return 0.0
    model.eval()
    device = next(model.parameters()).device
    preds = model(add_trigger(x[keep], high).to(device)).argmax(dim=1)
    return float((preds == target).float().mean())
