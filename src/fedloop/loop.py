"""The one round loop that serves every execution mode, and the reduction of a round's replies."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from .errors import AggregationError, TransportError
from .params import num_bytes
from .strategies.base import Strategy, task_seeds
from .types import (
    Aggregate,
    ClientInfo,
    Evaluation,
    Failure,
    Params,
    Reply,
    RoundRecord,
    ServerState,
    Task,
    Update,
)

log = logging.getLogger(__name__)


class Fleet(Protocol):
    def clients(self) -> list[ClientInfo]: ...

    def run(self, tasks: Sequence[Task], deadline: float | None = None) -> list[Reply]: ...


def split(replies: Sequence[Reply]) -> tuple[list[Update], list[Evaluation], list[Failure]]:
    updates = [r for r in replies if isinstance(r, Update)]
    evals = [r for r in replies if isinstance(r, Evaluation)]
    failures = [r for r in replies if isinstance(r, Failure)]
    return updates, evals, failures


def reduce(updates: Sequence[Update], strategy: Strategy, population: int = 0) -> Aggregate:
    """Aggregate updates in client-id order, so the result does not depend on arrival order; `population` is
    the number of clients the round was configured from."""
    ids = [u.client_id for u in updates]
    if len(set(ids)) != len(ids):
        raise AggregationError(f"more than one update from a client in one round: {sorted(ids)}")
    return replace(strategy.aggregate(sorted(updates, key=lambda u: u.client_id)), population=population)


def federated_metrics(evals: Sequence[Evaluation]) -> dict[str, float]:
    """Example-weighted means over clients' local test splits, and the spread of accuracy across clients."""
    if not evals:
        return {}
    total = sum(e.num_examples for e in evals)
    out = {}
    for key in evals[0].metrics:
        vals = [e.metrics[key] for e in evals if key in e.metrics]
        if len(vals) == len(evals):
            out[f"fed_{key}"] = sum(e.metrics[key] * e.num_examples for e in evals) / total
    if all("accuracy" in e.metrics for e in evals):
        acc = np.array([e.metrics["accuracy"] for e in evals])
        out.update(fed_accuracy_min=float(acc.min()), fed_accuracy_p10=float(np.percentile(acc, 10)),
                   fed_accuracy_median=float(np.median(acc)))
    return out


@dataclass(frozen=True)
class StopRule:
    """Stop after `rounds`, or when an evaluation reaches `target_accuracy`, or when the evaluation loss
    has not improved for `patience` evaluations, whichever comes first."""

    rounds: int
    target_accuracy: float | None = None
    patience: int | None = None


@dataclass
class LoopResult:
    state: ServerState
    records: list[RoundRecord] = field(default_factory=list)
    stop_reason: str = "rounds"
    final_metrics: dict[str, float] = field(default_factory=dict)


Evaluator = Callable[[Params], dict[str, float]]


@dataclass
class _Patience:
    limit: int | None
    best: float = float("inf")
    stale: int = 0

    def exhausted(self, loss: float) -> bool:
        if loss < self.best:
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
        return self.limit is not None and self.stale >= self.limit


def evaluate_round(state: ServerState, fleet: Fleet, evaluate: Evaluator | None,
                   federated: bool) -> dict[str, float]:
    """Centralized metrics on the held-out test set and federated metrics on every client's local split."""
    metrics = dict(evaluate(state.params)) if evaluate is not None else {}
    if federated:
        ids = sorted(c.client_id for c in fleet.clients())
        seeds = task_seeds(state.seed, state.round, ids).tolist()
        tasks = [Task(c, state.round, "evaluate", state.params, s) for c, s in zip(ids, seeds, strict=True)]
        _, evals, _ = split(fleet.run(tasks))
        metrics.update(federated_metrics(evals))
    return metrics


def run_loop(strategy: Strategy, fleet: Fleet, state: ServerState, stop: StopRule, *,
             evaluate: Evaluator | None = None, eval_every: int = 1, federated_eval: bool = False,
             on_round: Callable[[RoundRecord, ServerState], None] | None = None,
             deadline: float | None = None, min_updates: int = 0, retries: int = 0) -> LoopResult:
    """Run rounds from `state` until a stop condition holds (see DESIGN.md, "One round").

    A round with fewer than `min_updates` updates is recorded as failed (the model does not move) and run
    again, up to `retries` times; then the run stops with a TransportError (its last good state is saved).
    """
    result = LoopResult(state)
    patience = _Patience(stop.patience)
    attempts = 0
    while state.round < stop.rounds:
        start = time.perf_counter()
        available = fleet.clients()
        tasks = strategy.configure(state, available)
        replies = fleet.run(tasks, deadline)
        updates, _, failures = split(replies)
        for f in failures:
            log.warning("round %d: client %d failed: %s", f.round, f.client_id, f.reason)
        up = sum(num_bytes(u.params) for u in updates)  # before evaluation, which starts the fleet's next call
        down = num_bytes(state.params) * len(tasks)
        if len(updates) < min_updates:
            attempts += 1
            log.warning("round %d failed: %d of the %d updates it needs arrived (attempt %d of %d)",
                        state.round + 1, len(updates), min_updates, attempts, retries + 1)
            record = RoundRecord(round=state.round + 1, clients=len(updates), failures=len(failures),
                                 train_loss=None, bytes_up=up, bytes_down=down,
                                 seconds=time.perf_counter() - start, failed=True)
            result.records.append(record)
            if on_round is not None:
                on_round(record, state)
            if attempts > retries:
                raise TransportError(f"round {state.round + 1} failed {attempts} times: fewer than "
                                     f"min_updates = {min_updates} updates arrived")
            continue
        attempts = 0
        if updates:
            agg = reduce(updates, strategy, population=len(available))
            state = strategy.apply(state, agg)
        else:
            log.warning("round %d: no updates arrived; the global model is unchanged", state.round + 1)
            state = ServerState(state.round + 1, state.params, state.opt_state, state.extras, state.seed)
            agg = None
        metrics: dict[str, float] = {}
        last = state.round >= stop.rounds
        if state.round % eval_every == 0 or last:
            metrics = evaluate_round(state, fleet, evaluate, federated_eval)
            result.final_metrics = metrics
        record = RoundRecord(
            round=state.round, clients=len(updates), failures=len(failures),
            train_loss=agg.metrics.get("train_loss") if agg else None,
            bytes_up=up, bytes_down=down,
            seconds=time.perf_counter() - start, metrics=metrics)
        result.records.append(record)
        result.state = state
        if on_round is not None:
            on_round(record, state)
        if metrics:
            acc = metrics.get("accuracy", metrics.get("fed_accuracy"))
            loss = metrics.get("loss", metrics.get("fed_loss"))
            if stop.target_accuracy is not None and acc is not None and acc >= stop.target_accuracy:
                result.stop_reason = "target_accuracy"
                break
            if loss is not None and patience.exhausted(loss):
                result.stop_reason = "patience"
                break
    if not result.records:
        result.final_metrics = evaluate_round(state, fleet, evaluate, federated_eval)
    return result
