"""Coordinate-wise robust aggregators, computed one chunk of coordinates at a time, each coordinate's n values
sorted (base.sorted_columns).

median: each coordinate's median (the mean of the two middle values for an even count). Tolerates f < n/2
Byzantine updates (Yin et al. 2018).
trimmed_mean: each coordinate's mean after dropping its floor(beta n) largest and floor(beta n) smallest values;
tolerates f <= floor(beta n) (Yin et al. 2018), so a round too small to trim one value (n < 1 / beta) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import checks
from ..types import Params, Update
from .base import AggState, check_round_size, names_of, per_column, shaped, sorted_columns


def coordinate_median(rows: torch.Tensor) -> torch.Tensor:
    """The median of each column of [n, d] rows (even n: the mean of the two middle values)."""
    return middle(torch.sort(rows, dim=0).values.T)


def middle(ordered: torch.Tensor) -> torch.Tensor:
    """The median of each row of [d, n] rows sorted ascending, in float64 (even n: the mean of the two middle
    values, which float64 holds exactly for float32 inputs)."""
    n = ordered.shape[1]
    if n % 2:
        return ordered[:, n // 2].double()
    return (ordered[:, n // 2 - 1].double() + ordered[:, n // 2].double()) / 2


@dataclass(frozen=True)
class Median:
    name: ClassVar[str] = "median"

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {}

    def apply(self, updates: Sequence[Update], state: AggState
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        names = names_of(updates)
        return {k: shaped(updates, k, per_column(updates, k, lambda ordered, _: middle(ordered), sorted_columns))
                for k in names}, {}


@dataclass(frozen=True)
class TrimmedMean:
    name: ClassVar[str] = "trimmed_mean"
    beta: float = 0.1
    """The fraction trimmed at each end of every coordinate."""

    def __post_init__(self) -> None:
        checks.in_range(self, "beta", 0.0, 0.5)

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {}

    def requires(self) -> list[tuple[int, str]]:
        if self.beta == 0:
            return []  # a round too small to trim one value would silently be the plain mean
        return [(math.ceil(1 / self.beta), f"trims floor(beta n) values at each end (beta = {self.beta:g})")]

    def apply(self, updates: Sequence[Update], state: AggState
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        n = len(updates)
        cut = math.floor(self.beta * n)
        check_round_size(self, n)
        names = names_of(updates)

        def trimmed(ordered: torch.Tensor, _: slice) -> torch.Tensor:
            return ordered[:, cut:n - cut].sum(dim=1, dtype=torch.float64) / (n - 2 * cut)

        return {k: shaped(updates, k, per_column(updates, k, trimmed, sorted_columns)) for k in names}, {}
