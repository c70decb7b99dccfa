"""Aggregators: pure, deterministic reductions of a round's updates into one Aggregate.

An aggregator receives the updates already sorted by client id (see loop.reduce), so its floating-point
summation order, and therefore its result, does not depend on the order in which replies arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from .errors import AggregationError
from .params import check_compatible
from .types import Aggregate, Update

Weighting = Literal["samples", "uniform"]
Aggregator = Callable[[Sequence[Update]], Aggregate]


def weights(updates: Sequence[Update], weighting: Weighting) -> list[float]:
    """w_t = n_t / sum(n) for "samples", 1 / C for "uniform"."""
    if weighting == "uniform":
        return [1.0 / len(updates)] * len(updates)
    if weighting == "samples":
        total = sum(u.num_examples for u in updates)
        if total <= 0:
            raise AggregationError("weighting 'samples' needs updates with num_examples > 0")
        return [u.num_examples / total for u in updates]
    raise AggregationError(f"unknown weighting {weighting!r}; allowed: 'samples', 'uniform'")


def mean_metrics(updates: Sequence[Update]) -> dict[str, float]:
    """Example-weighted mean of each client metric (clients that lack a metric are skipped for it)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for u in updates:
        for k, v in u.metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * u.num_examples
            counts[k] = counts.get(k, 0) + u.num_examples
    return {k: sums[k] / counts[k] for k in sums if counts[k] > 0}


def weighted_mean(updates: Sequence[Update], weighting: Weighting = "samples") -> Aggregate:
    """sum_t w_t * update_t, accumulated one update at a time (one running sum per tensor)."""
    if not updates:
        raise AggregationError("cannot aggregate zero updates")
    first = updates[0].params
    acc = {k: torch.zeros_like(v) for k, v in first.items()}
    for u, w in zip(updates, weights(updates, weighting), strict=True):
        check_compatible(first, u.params, what=f"update of client {u.client_id}")
        for k, v in u.params.items():
            acc[k].add_(v, alpha=w)
    return Aggregate(
        params=acc,
        num_clients=len(updates),
        num_examples=sum(u.num_examples for u in updates),
        metrics=mean_metrics(updates),
    )
