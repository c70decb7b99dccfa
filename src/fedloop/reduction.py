"""Where a round's updates become its aggregate, once, for every fleet: in client-id order (so the result does not
depend on the order replies arrived), through the server side of the transforms, the aggregator, and the
strategy's reduction of extras. Counts and metrics are built here, not by each aggregator."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .aggregators import mean_metrics
from .errors import AggregationError
from .sampling import server_seed, sub_seed
from .secagg.vector import SecureSum
from .strategies.base import Strategy
from .transforms import RoundInfo, own_state
from .types import Aggregate, Failure, ServerState, Update


def screen(updates: Sequence[Update], strategy: Strategy, state: ServerState) -> tuple[list[Update], list[Failure]]:
    """Each update (in client-id order) through the strategy's own check, then every transform's server_update, in
    chain order, then the strategy's weighing; an update either rejects becomes a Failure with the reason."""
    ids = [u.client_id for u in updates]
    if len(set(ids)) != len(ids):
        raise AggregationError(f"more than one update from a client in one round: {sorted(ids)}")
    kept, rejected = [], []
    for u in sorted(updates, key=lambda u: u.client_id):
        if (why := strategy.refuse(u)) is not None:
            rejected.append(Failure(u.client_id, u.round, f"update rejected: {why}"))
            continue
        for i, transform in enumerate(strategy.transforms):
            out = transform.server_update(u, own_state(state.transform_state, i))
            if isinstance(out, str):
                rejected.append(Failure(u.client_id, u.round, f"update rejected: {out}"))
                break
            u = out
        else:
            kept.append(strategy.weigh(u, state))
    return kept, rejected


def reduce(updates: Sequence[Update], strategy: Strategy, state: ServerState, population: int = 0,
           nobody_asked: bool = False) -> tuple[Aggregate | None, list[Failure]]:
    """The aggregate of `updates` (None when no update passes the transforms) and the updates rejected.

    `population` is the number of clients the round was configured from. `nobody_asked`: Poisson sampling drew no
    client this round; the aggregate is then the zero sum through the transforms (central DP still releases its
    noise, and accounts for it), as DP-FedAvg prescribes.
    """
    kept, rejected = screen(updates, strategy, state)
    if not kept and not nobody_asked:
        return None, rejected
    if kept:
        params, agg_state = strategy.aggregator.apply(kept, state.agg_state)
    else:
        params, agg_state = {k: torch.zeros_like(v) for k, v in state.params.items()}, dict(state.agg_state)
    metrics = mean_metrics(kept)
    params, transform_state = _server_aggregate(params, strategy, state, kept, population, metrics)
    agg = Aggregate(params, len(kept), sum(u.num_examples for u in kept), metrics,
                    strategy.aggregate_extras(kept), population, agg_state, transform_state)
    return agg, rejected


def reduce_secure(total: SecureSum, strategy: Strategy, state: ServerState, population: int = 0) -> Aggregate:
    """The aggregate of a secure round: its mean (already reduced, under masks) through the server side of the
    transforms, which under secure aggregation never see an update (Strategy.insecure_part refuses those that
    must)."""
    params: dict[str, torch.Tensor] = dict(total.params)
    metrics: dict[str, float] = {} if total.train_loss is None else {"train_loss": total.train_loss}
    metrics["secagg_error_bound"] = total.error_bound
    params, transform_state = _server_aggregate(params, strategy, state, (), population, metrics, total)
    return Aggregate(params, total.num_clients, total.num_examples, metrics, {}, population, dict(state.agg_state),
                     transform_state)


def _server_aggregate(params: dict[str, torch.Tensor], strategy: Strategy, state: ServerState,
                      updates: Sequence[Update], population: int, metrics: dict[str, float],
                      secure: SecureSum | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The reduced update through each transform's server_aggregate, last transform first: the new params and
    transform states (the transforms' metrics go into `metrics`)."""
    transform_state = dict(state.transform_state)
    seed = server_seed(state.seed, state.round + 1)
    info = RoundInfo(state.round + 1, updates, population, strategy.sampler.expected(population),
                     "poisson" if strategy.sampler.poisson else "fixed", strategy.local.program(), secure)
    for i in reversed(range(len(strategy.transforms))):
        prefix = f"{i}/"
        own = own_state(transform_state, i)
        params, own, more = strategy.transforms[i].server_aggregate(params, own, sub_seed(seed, i), info)
        transform_state = {k: v for k, v in transform_state.items() if not k.startswith(prefix)}
        transform_state.update({prefix + k: v for k, v in own.items()})
        metrics.update(more)
    return params, transform_state
