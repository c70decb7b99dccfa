"""Aggregators that bound each update's influence by its norm.

centered_clip (Karimireddy, He & Jaggi 2021): v <- v + (1/n) sum_i clip(x_i - v, tau), `iterations` times, from the
previous round's aggregate (kept in the aggregator's state; zero at first), so an update far from the consensus
moves it by at most tau / n. Robust for f < n/2 with a suitable tau.
norm_bound (Sun et al. 2019): each update clipped to L2 norm `max_norm` (or, with `adaptive`, to `factor` times the
round's median update norm), then the plain mean. It bounds what one client can do, not what a majority can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import checks
from ..types import Params, Update
from .base import AggState, names_of, per_column, per_update, shaped


def _norms(updates: Sequence[Update], names: Sequence[str], center: dict[str, torch.Tensor] | None = None
           ) -> torch.Tensor:
    def sq(rows: torch.Tensor, k: str, cols: slice) -> torch.Tensor:
        return (rows if center is None else rows - center[k][cols]).square().sum(dim=1)

    return per_update(updates, names, sq).sqrt()


def _clipped_step(updates: Sequence[Update], name: str, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """mean_i scale_i (x_i - center) for tensor `name`."""
    return per_column(updates, name, lambda rows, cols: ((rows - center[cols]) * scale[:, None]).mean(dim=0))


def _scale(norms: torch.Tensor, bound: float) -> torch.Tensor:
    """min(1, bound / norm) per update."""
    return torch.where(norms > bound, bound / norms.clamp(min=1e-30), torch.ones_like(norms))


@dataclass(frozen=True)
class CenteredClip:
    name: ClassVar[str] = "centered_clip"
    tau: float = 1.0
    iterations: int = 3

    def __post_init__(self) -> None:
        checks.positive(self, "tau")
        checks.at_least(self, "iterations", 1)

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {}

    def apply(self, updates: Sequence[Update], state: AggState
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        names = names_of(updates)
        ref = updates[0].params
        v = {k: state[k].reshape(-1).to(ref[k].device, torch.float64) if k in state else
             torch.zeros(ref[k].numel(), dtype=torch.float64, device=ref[k].device) for k in names}
        for _ in range(self.iterations):
            scale = _scale(_norms(updates, names, v), self.tau)
            v = {k: v[k] + _clipped_step(updates, k, v[k], scale) for k in names}
        out = {k: shaped(updates, k, v[k]) for k in names}
        return out, {k: t.clone() for k, t in out.items()}


@dataclass(frozen=True)
class NormBound:
    name: ClassVar[str] = "norm_bound"
    max_norm: float = 1.0
    adaptive: bool = False
    factor: float = 1.0
    """With `adaptive`, the bound is factor x the round's median update norm."""

    def __post_init__(self) -> None:
        checks.positive(self, "max_norm", "factor")
        checks.one_of(self, "adaptive", (True, False))

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {}

    def apply(self, updates: Sequence[Update], state: AggState
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        names = names_of(updates)
        norms = _norms(updates, names)
        bound = self.factor * float(torch.median(norms)) if self.adaptive else self.max_norm
        scale = _scale(norms, bound)
        return {k: shaped(updates, k, per_column(updates, k, lambda rows, _: (rows * scale[:, None]).mean(dim=0)))
                for k in names}, {}
