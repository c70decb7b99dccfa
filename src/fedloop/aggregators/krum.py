"""Distance-based selection: Krum, multi-Krum (Blanchard et al. 2017) and Bulyan (El Mhamdi et al. 2018).

Krum scores each update by the sum of squared distances to its n - f - 2 nearest others and keeps the lowest
score; it assumes n > 2f + 2. Multi-Krum averages the m lowest-scoring updates (m = n - f by default). Bulyan
selects theta = n - 2f updates by repeated Krum, then takes each coordinate's mean of the beta = theta - 2f values
nearest its median; it assumes n >= 4f + 3. Squared distances are accumulated tensor by tensor (one cdist per
tensor), so only one tensor of every update is in memory at a time. Ties go to the lowest client id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import checks
from ..types import Params, Update
from .base import AggState, check_round_size, column_chunks, names_of, per_column, shaped
from .coordinate import coordinate_median


def squared_distances(updates: Sequence[Update], names: Sequence[str]) -> torch.Tensor:
    """[n, n] squared L2 distances between updates over all tensors together."""
    n = len(updates)
    d = torch.zeros(n, n, dtype=torch.float64, device=updates[0].params[names[0]].device)
    for k in names:
        for _, rows in column_chunks(updates, k):
            d += torch.cdist(rows, rows).square()
    return d


def krum_scores(d: torch.Tensor, f: int) -> torch.Tensor:
    """Each update's sum of squared distances to its n - f - 2 nearest other updates."""
    n = d.shape[0]
    closest = n - f - 2
    others = d + torch.diag(torch.full((n,), float("inf"), dtype=d.dtype, device=d.device))
    return torch.sort(others, dim=1).values[:, :closest].sum(dim=1)


def krum_select(d: torch.Tensor, f: int, m: int) -> list[int]:
    """The m lowest Krum scores, in client-id order (a stable sort: ties go to the lower index)."""
    order = torch.sort(krum_scores(d, f), stable=True).indices
    return sorted(order[:m].tolist())


def mean_of(updates: Sequence[Update], names: Sequence[str], chosen: Sequence[int]) -> dict[str, torch.Tensor]:
    picked = [updates[i] for i in chosen]
    return {k: shaped(updates, k, per_column(picked, k, lambda rows, _: rows.mean(dim=0))) for k in names}


def krum_requires(f: int, m: int | None = None) -> list[tuple[int, str]]:
    """What Krum and multi-Krum assume of a round's size."""
    return [(2 * f + 3, f"tolerates f = {f} only with n > 2f + 2"),
            *([(m, f"averages m = {m} updates")] if m is not None else [])]


def krum_mean(aggregator: object, updates: Sequence[Update], f: int, m: int) -> dict[str, torch.Tensor]:
    """The mean of the m best Krum-scored updates, after refusing a round too small for the aggregator."""
    check_round_size(aggregator, len(updates))
    names = names_of(updates)
    return mean_of(updates, names, krum_select(squared_distances(updates, names), f, m))


@dataclass(frozen=True)
class Krum:
    name: ClassVar[str] = "krum"
    f: int = 1
    """The number of Byzantine updates tolerated."""

    def __post_init__(self) -> None:
        checks.at_least(self, "f", 0)

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {}

    def requires(self) -> list[tuple[int, str]]:
        return krum_requires(self.f)

    def apply(self, updates: Sequence[Update], state: AggState
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return krum_mean(self, updates, self.f, 1), {}


@dataclass(frozen=True)
class MultiKrum:
    name: ClassVar[str] = "multi_krum"
    f: int = 1
    m: int | None = None
    """How many of the best-scored updates are averaged (default n - f)."""

    def __post_init__(self) -> None:
        checks.at_least(self, "f", 0)
        checks.at_least(self, "m", 1, optional=True)

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {}

    def requires(self) -> list[tuple[int, str]]:
        return krum_requires(self.f, self.m)

    def apply(self, updates: Sequence[Update], state: AggState
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return krum_mean(self, updates, self.f, len(updates) - self.f if self.m is None else self.m), {}


@dataclass(frozen=True)
class Bulyan:
    name: ClassVar[str] = "bulyan"
    f: int = 1

    def __post_init__(self) -> None:
        checks.at_least(self, "f", 0)

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {}

    def requires(self) -> list[tuple[int, str]]:
        return [(4 * self.f + 3, f"tolerates f = {self.f} only with n >= 4f + 3")]

    def select(self, d: torch.Tensor) -> list[int]:
        """theta = n - 2f updates, each the Krum choice among those not yet selected."""
        remaining = list(range(d.shape[0]))
        chosen: list[int] = []
        for _ in range(d.shape[0] - 2 * self.f):
            sub = d[remaining][:, remaining]
            f = min(self.f, max(len(remaining) - 3, 0))  # Krum among the rest keeps its n > 2f + 2
            best = remaining[krum_select(sub, f, 1)[0]]
            chosen.append(best)
            remaining.remove(best)
        return sorted(chosen)

    def apply(self, updates: Sequence[Update], state: AggState
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        check_round_size(self, len(updates))
        names = names_of(updates)
        chosen = self.select(squared_distances(updates, names))
        beta = len(chosen) - 2 * self.f
        picked = [updates[i] for i in chosen]

        def around_median(rows: torch.Tensor, _: slice) -> torch.Tensor:
            nearest = torch.sort((rows - coordinate_median(rows)).abs(), dim=0, stable=True).indices[:beta]
            return torch.gather(rows, 0, nearest).mean(dim=0)

        return {k: shaped(updates, k, per_column(picked, k, around_median)) for k in names}, {}
