"""The geometric median (RFA, Pillutla et al. 2022) by the smoothed Weiszfeld algorithm: v <- sum b_i x_i / sum b_i
with b_i = a_i / max(nu, ||v - x_i||), from the weighted mean, for at most `iterations` steps or until v moves by
less than `tolerance` relative to its norm. Its breakdown point is 1/2: it tolerates f < n/2 (by weight). Each
step reads the updates one tensor at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import checks
from ..types import Params, Update
from .base import AggState, Weighting, names_of, per_column, per_update, shaped


def _distances(updates: Sequence[Update], names: Sequence[str], v: dict[str, torch.Tensor]) -> torch.Tensor:
    return per_update(updates, names, lambda rows, k, cols: (rows - v[k][cols]).square().sum(dim=1)).sqrt()


def _weighted(updates: Sequence[Update], names: Sequence[str], w: torch.Tensor) -> dict[str, torch.Tensor]:
    w = w / w.sum()
    return {k: per_column(updates, k, lambda rows, _: (rows * w[:, None]).sum(dim=0)) for k in names}


@dataclass(frozen=True)
class GeometricMedian:
    name: ClassVar[str] = "geomed"
    iterations: int = 100
    tolerance: float = 1e-6
    nu: float = 1e-6
    """Smoothing: distances below nu count as nu (no division by zero at a data point)."""
    weighting: Weighting = "uniform"

    def __post_init__(self) -> None:
        checks.at_least(self, "iterations", 1)
        checks.positive(self, "tolerance", "nu")
        checks.one_of(self, "weighting", ("uniform", "samples"))

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {}

    def apply(self, updates: Sequence[Update], state: AggState
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        names = names_of(updates)
        alpha = torch.tensor([1.0 if self.weighting == "uniform" else float(u.num_examples) for u in updates],
                             dtype=torch.float64, device=updates[0].params[names[0]].device)
        v = _weighted(updates, names, alpha)
        for _ in range(self.iterations):
            beta = alpha / _distances(updates, names, v).clamp(min=self.nu)
            new = _weighted(updates, names, beta)
            moved = sum(float((new[k] - v[k]).square().sum()) for k in names) ** 0.5
            size = sum(float(new[k].square().sum()) for k in names) ** 0.5
            v = new
            if moved <= self.tolerance * max(size, 1e-12):
                break
        return {k: shaped(updates, k, v[k]) for k in names}, {}
