"""The (weighted) mean: the plain FedAvg aggregator, streamed one update at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import checks
from ..errors import AggregationError
from ..params import check_compatible
from ..types import Params, Update, in_memory
from .base import AggState, Weighting


@dataclass(frozen=True)
class WeightedMean:
    """sum_t w_t u_t / D, streamed one update at a time (one running sum per tensor, so an update read from disk
    is read once and never held whole).

    w_t = n_t (weighting "samples") or 1 ("uniform"). D is the sum of the round's weights, or `fixed_denominator`
    when set: a denominator that does not depend on who replied, as DP-FedAvg needs (there, the expected total
    weight q W of a round under Poisson sampling, which makes the estimate unbiased).
    """

    name: ClassVar[str] = "mean"
    weighting: Weighting = "samples"
    fixed_denominator: float | None = None

    def __post_init__(self) -> None:
        checks.one_of(self, "weighting", Weighting)
        if self.fixed_denominator is not None:
            checks.positive(self, "fixed_denominator")

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {}

    def weights(self, updates: Sequence[Update]) -> list[float]:
        """w_t / D for each update."""
        raw = [1.0] * len(updates) if self.weighting == "uniform" else [float(u.num_examples) for u in updates]
        total = self.fixed_denominator if self.fixed_denominator is not None else sum(raw)
        if total <= 0:
            raise AggregationError("weighting 'samples' needs updates with num_examples > 0")
        return [w / total for w in raw]

    def apply(self, updates: Sequence[Update], state: AggState
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if not updates:
            raise AggregationError("cannot aggregate zero updates")
        first = updates[0].params
        acc = {k: torch.zeros_like(v) for k, v in first.items()}
        sums = list(acc.values())
        for u, w in zip(updates, self.weights(updates), strict=True):
            check_compatible(first, u.params, what=f"update of client {u.client_id}")
            if in_memory(u.params):  # one call for all its tensors, the same arithmetic as add_
                torch._foreach_add_(sums, [u.params[k] for k in acc], alpha=w)
                continue
            for k, v in u.params.items():  # read from disk one tensor at a time
                acc[k].add_(v, alpha=w)
        return acc, {}
