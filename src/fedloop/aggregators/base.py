"""What every aggregator shares: the protocol (a stateful init/apply pair from a round's updates, sorted by client
id, to the reduced update's tensors), the example-weighted mean of client metrics, and the helpers robust
aggregators read updates with one tensor at a time, so that spooled updates never sit in memory whole."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal, Protocol

import torch

from ..errors import AggregationError, ConfigError
from ..params import check_compatible
from ..types import Params, Update

Weighting = Literal["samples", "uniform"]
AggState = Mapping[str, torch.Tensor]


class Aggregator(Protocol):
    name: ClassVar[str]

    def init(self, params: Params) -> dict[str, torch.Tensor]: ...

    def apply(self, updates: Sequence[Update], state: AggState
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]: ...


def names_of(updates: Sequence[Update]) -> list[str]:
    """The tensor names of a round's updates, checked to agree in names and shapes."""
    if not updates:
        raise AggregationError("cannot aggregate zero updates")
    first = updates[0].params
    for u in updates[1:]:
        check_compatible(first, u.params, what=f"update of client {u.client_id}")
    return list(first)


def stacked(updates: Sequence[Update], name: str) -> torch.Tensor:
    """One tensor of every update, stacked in client-id order as float64 rows: [n, numel]."""
    return torch.stack([u.params[name].reshape(-1).to(torch.float64) for u in updates])


def shaped(updates: Sequence[Update], name: str, row: torch.Tensor) -> torch.Tensor:
    """A float64 row back in the shape and dtype of the updates' tensor `name`."""
    ref = updates[0].params[name]
    return row.reshape(ref.shape).to(ref.dtype)


def need(aggregator: object, n: int, minimum: int, rule: str) -> None:
    """Refuse a round of n updates when the aggregator's assumption needs at least `minimum`."""
    if n < minimum:
        raise ConfigError(f"aggregator {getattr(aggregator, 'name', aggregator)!r} {rule}, so it needs at least "
                          f"{minimum} updates; this round has {n}")


def mean_metrics(updates: Sequence[Update]) -> dict[str, float]:
    """Example-weighted mean of each client metric (clients that lack a metric are skipped for it). Metrics whose
    name starts with "_" are for the server's transforms only (e.g. DP's clipped bit) and are never released."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for u in updates:
        for k, v in u.metrics.items():
            if k.startswith("_"):
                continue
            sums[k] = sums.get(k, 0.0) + float(v) * u.num_examples
            counts[k] = counts.get(k, 0) + u.num_examples
    return {k: sums[k] / counts[k] for k in sums if counts[k] > 0}
