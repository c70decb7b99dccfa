"""The one round loop that serves every execution mode (DESIGN.md, "One round")."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import checks, culprits, interrupts
from .asynchronous import Flight, refusal, step
from .client.training import LocalSGD
from .errors import AggregationError, ConfigError, PrivacyBudgetExhausted, WorkersLost
from .fleet import Fleet, check_capabilities, incidents, run
from .heterogeneity import Heterogeneity
from .observers import Observer
from .reduction import reduce, reduce_secure
from .sampling import task_seeds
from .secagg.rounds import SecureRound, secure_exchange
from .stops import PrivacyBudget, StopCondition
from .strategies.base import Strategy
from .types import (
    Aggregate,
    Broadcast,
    ConfigValue,
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

Evaluator = Callable[[Params], dict[str, float]]


@dataclass(frozen=True)
class RoundPolicy:
    """How the loop treats a round that goes badly, with any fleet: replies are awaited for at most
    `round_deadline` seconds (None: until every client answers); a round with fewer than `min_updates` updates, or
    whose new params are not finite, is recorded as failed (the model does not move) and run again, up to
    `retries` times, after which the run stops with an AggregationError (its last good state is saved)."""

    round_deadline: float | None = None
    min_updates: int = 1
    retries: int = 3

    def __post_init__(self) -> None:
        if self.round_deadline is not None:
            checks.positive(self, "round_deadline")
        checks.at_least(self, "min_updates", 0)
        checks.at_least(self, "retries", 0)


@dataclass
class LoopResult:
    state: ServerState
    records: list[RoundRecord] = field(default_factory=list)
    stop_reason: str = "rounds"
    final_metrics: dict[str, float] = field(default_factory=dict)


_EMPTY_TOLD: set[tuple[int, ...]] = set()
"""The sets of clients without local test rows that have been named in the log (once each)."""


def federated_metrics(evals: Sequence[Evaluation]) -> dict[str, float]:
    """Example-weighted means over clients' local test splits, and the spread across clients of each accuracy
    (global, personal, fine-tuned: min, 10th percentile, median, standard deviation); clients with no local test rows
    count for nothing, and are named in the log once."""
    empty = tuple(e.client_id for e in evals if e.num_examples == 0)
    if empty and empty not in _EMPTY_TOLD:
        _EMPTY_TOLD.add(empty)
        log.info("%d of %d clients have no local test rows; federated evaluation uses the other %d (clients %s)",
                 len(empty), len(evals), len(evals) - len(empty), ", ".join(map(str, empty[:20])) +
                 (", ..." if len(empty) > 20 else ""))
    evals = [e for e in evals if e.num_examples > 0]
    total = sum(e.num_examples for e in evals)
    if total <= 0:  # fleets check counts; this guards the division all the same
        return {}
    out = {}
    for key in evals[0].metrics:
        vals = [e.metrics[key] for e in evals if key in e.metrics]
        if len(vals) == len(evals):
            out[f"fed_{key}"] = sum(e.metrics[key] * e.num_examples for e in evals) / total
    for key in [k for k in evals[0].metrics if k.endswith("accuracy")]:  # global, personal, fine-tuned
        if all(key in e.metrics for e in evals):
            acc = np.array([e.metrics[key] for e in evals])
            out.update({f"fed_{key}_min": float(acc.min()), f"fed_{key}_p10": float(np.percentile(acc, 10)),
                        f"fed_{key}_median": float(np.median(acc)), f"fed_{key}_std": float(acc.std())})
    return out


def evaluate_round(state: ServerState, fleet: Fleet, evaluator: Evaluator | None, federated: bool,
                   deadline: float | None = None, config: Mapping[str, ConfigValue] | None = None
                   ) -> tuple[dict[str, float], list[Failure]]:
    """Centralized metrics on the held-out test set and federated metrics on every client's local split (each
    evaluate task carrying `config`), with the clients whose evaluation failed (the federated metrics cover the
    others)."""
    metrics = dict(evaluator(state.params)) if evaluator is not None else {}
    failures: list[Failure] = []
    if federated:
        ids = [c.client_id for c in fleet.clients() if c.client_id not in state.excluded]
        seeds = task_seeds(state.seed, state.round, ids).tolist()
        shared = Broadcast(state.round, state.params, {}, "evaluate")
        tasks = [Task(c, state.round, "evaluate", shared, s, dict(config or {}))
                 for c, s in zip(ids, seeds, strict=True)]
        replies = run(fleet, tasks, deadline)
        failures = [r for r in replies if isinstance(r, Failure)]
        for f in failures:
            log.warning("round %d: client %d failed its evaluation: %s", f.round, f.client_id, f.reason)
        metrics.update(federated_metrics([r for r in replies if isinstance(r, Evaluation)]))
    return metrics, failures


@dataclass(frozen=True)
class _Evaluation:
    """How a run evaluates: centrally with `evaluator`, and on the clients' splits when `federated`, each task
    carrying `config`."""

    evaluator: Evaluator | None
    federated: bool
    config: dict[str, ConfigValue]
    deadline: float | None

    def run(self, state: ServerState, fleet: Fleet) -> tuple[dict[str, float], list[Failure]]:
        return evaluate_round(state, fleet, self.evaluator, self.federated, self.deadline, self.config)


@dataclass
class _Exchanges:
    """What a round's exchanges produced."""

    selected: tuple[int, ...]
    updates: list[Update]
    failures: list[Failure]
    population: int
    secure: SecureRound | None = None
    """Under secure aggregation: the round's sum (or why it aborted), instead of updates."""
    conditions: dict[str, float] = field(default_factory=dict)
    """Under [heterogeneity]: how many clients were available and how many straggled."""


def exchange(strategy: Strategy, fleet: Fleet, state: ServerState, deadline: float | None,
             heterogeneity: Heterogeneity | None = None, flight: Flight | None = None) -> _Exchanges:
    """The round's exchanges: configure, then follow-ups until the strategy has its updates; for an asynchronous
    strategy, one server step over the tasks in `flight`. Excluded clients are never asked, nor clients that
    `heterogeneity` says are off this round; its stragglers do partial work. Under a virtual clock, the conditions
    hold its time at the end of the exchanges."""
    got = _exchange(strategy, fleet, state, deadline, heterogeneity, flight)
    if (clock := getattr(fleet, "virtual_time", None)) is not None:
        got.conditions["virtual_time"] = clock()
    return got


def _exchange(strategy: Strategy, fleet: Fleet, state: ServerState, deadline: float | None,
              heterogeneity: Heterogeneity | None, flight: Flight | None) -> _Exchanges:
    hetero = heterogeneity if heterogeneity is not None and heterogeneity.active else None
    available = [c for c in fleet.clients() if c.client_id not in state.excluded]
    conditions: dict[str, float] = {}
    if hetero is not None:
        available = hetero.available(available, state.seed, state.round + 1)
        conditions = {"available": len(available), "stragglers": 0}
        if not available and not (flight is not None and flight.tasks):
            log.warning("round %d: no client is available; the round is skipped", state.round + 1)
            return _Exchanges((), [], [], 0, None, conditions)
    if flight is not None:
        done = step(strategy, fleet, state, available, flight, deadline)
        failed = [r for r in done.replies if isinstance(r, Failure)]
        for f in failed:
            log.warning("step %d: client %d failed: %s", state.round + 1, f.client_id, f.reason)
        return _Exchanges(tuple(sorted(r.client_id for r in done.replies)),
                          [r for r in done.replies if isinstance(r, Update)], failed,
                          max(len(available), 1), None, {**conditions, **done.conditions})
    sizes = {c.client_id: c.num_examples for c in available}
    tasks = strategy.configure(state, available)
    # over-selection: the first exchange ends once the round's size in updates has come back
    enough = strategy.sampler.enough(len(available)) if strategy.sampler.over_selection else None
    failures: list[Failure] = []
    dropped: list[Failure] = []
    secure = None
    while True:
        if hetero is not None:
            tasks, lost, straggled = hetero.straggle(tasks, sizes, strategy, state.seed)
            dropped += lost
            conditions["stragglers"] += straggled
        if strategy.secure is not None and tasks and all(t.kind == "fit" for t in tasks):
            uniform = getattr(strategy.aggregator, "weighting", "samples") == "uniform"
            noise = next((n for t in strategy.transforms if (n := t.client_noise()) is not None), (0.0, 0.0))
            secure = secure_exchange(strategy.secure, fleet, tasks, available, uniform, deadline, noise)
            replies: list[Reply] = list(secure.failures)
        else:
            replies = run(fleet, tasks, deadline, enough)
            enough = None
        failures += [r for r in replies if isinstance(r, Failure)]
        more = strategy.follow_up(state, available, tasks, replies)
        if not more:
            break
        tasks = more
    for f in failures:
        log.warning("round %d: client %d failed: %s", f.round, f.client_id, f.reason)
    updates = [r for r in replies if isinstance(r, Update)]
    selected = sorted({t.client_id for t in tasks} | {f.client_id for f in dropped})
    return _Exchanges(tuple(selected), updates, failures + dropped, len(available), secure, conditions)


def _finite(params: Params) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in params.values() if v.is_floating_point())


NON_FINITE = "its aggregate would make the global params non-finite"


def _advance(strategy: Strategy, state: ServerState, agg: Aggregate | None, min_updates: int
             ) -> tuple[ServerState | None, str | None]:
    """The state after a round, or None with the reason the round failed."""
    if agg is None and min_updates == 0:
        log.warning("round %d: no updates arrived; the global model is unchanged", state.round + 1)
        return replace(state, round=state.round + 1), None
    if agg is None or agg.num_clients < min_updates:
        return None, f"{agg.num_clients if agg else 0} of the {min_updates} updates it needs were accepted"
    new = strategy.apply(state, agg)
    if not _finite(new.params):
        return None, NON_FINITE
    return new, None


def _settle(strategy: Strategy, state: ServerState, got: _Exchanges, min_updates: int, nobody: bool
            ) -> tuple[Aggregate | None, list[Failure], ServerState | None, str | None, tuple[int, ...]]:
    """The round's aggregate, the updates rejected, the new state (or None and why the round failed) and the clients
    to exclude. A round that would make the params non-finite, or whose weighted update sum overflows, is settled
    without the updates responsible when culprits.search finds them. A secure round has only its sum: it is reduced
    as it is, or fails when it aborted."""
    if got.secure is not None and got.secure.result is not None:
        secure = reduce_secure(got.secure.result, strategy, state, got.population)
        return (secure, [], *_advance(strategy, state, secure, min_updates), ())
    if got.secure is not None and got.secure.abort is not None:
        return None, [], None, f"secure aggregation aborted: {got.secure.abort}", ()
    def attempt(updates: Sequence[Update]) -> tuple[Aggregate | None, list[Failure], ServerState | None, str | None]:
        agg, rejected = reduce(updates, strategy, state, got.population, nobody) if updates or nobody else (None, [])
        return (agg, rejected, *_advance(strategy, state, agg, min_updates))

    agg, rejected, new, why = attempt(got.updates)
    if why != NON_FINITE and not (new is not None and culprits.overflows(got.updates, state.params)):
        return agg, rejected, new, why, ()

    def sound(updates: list[Update]) -> tuple[Aggregate | None, list[Failure], ServerState | None, str | None] | None:
        out = attempt(updates)
        return out if out[2] is not None and not culprits.overflows(updates, state.params) else None

    found = culprits.search(got.updates, sound)
    if found is None:
        return agg, rejected, new, why, ()
    for f in found.refused:
        log.warning("round %d: client %d: %s", f.round, f.client_id, f.reason)
    agg, rejected, new, why = found.result
    return agg, [*found.refused, *rejected], new, why, found.excluded


def run_loop(strategy: Strategy, fleet: Fleet, state: ServerState, stops: Sequence[StopCondition], *,
             evaluator: Evaluator | None = None, eval_every: int = 1, federated_eval: bool = True,
             eval_config: Mapping[str, ConfigValue] | None = None, policy: RoundPolicy = RoundPolicy(),
             heterogeneity: Heterogeneity | None = None, observers: Sequence[Observer] = ()) -> LoopResult:
    """Run rounds from `state` until a stop condition holds (see DESIGN.md, "One round").

    Observers get every round record (failed attempts included) with the state after it. A KeyboardInterrupt (Ctrl-C,
    or SIGTERM in the command line) ends the run with stop reason "interrupted" and the state of its last completed
    round; a round whose params stay non-finite through its retries ends it with "diverged".
    """
    check_capabilities(strategy.needs, fleet, f"strategy {strategy.name!r}" +
                       (" with secure aggregation" if strategy.secure is not None else ""))
    stops = [*stops, PrivacyBudget(strategy.transforms)]
    result = LoopResult(state)
    evaluation = _Evaluation(evaluator, federated_eval, dict(eval_config or {}), policy.round_deadline)
    if heterogeneity is not None and (why := heterogeneity.check(strategy)) is not None:
        raise ConfigError(f"heterogeneity.stragglers = {heterogeneity.stragglers}: strategy {strategy.name!r} "
                          f"cannot straggle: {why}", key="stragglers", value=heterogeneity.stragglers, rule=why)
    flight = None
    if strategy.slots(1) is not None:
        flight = Flight()
        stragglers = heterogeneity.stragglers if heterogeneity is not None else 0.0
        if (why := refusal(strategy, federated_eval, stragglers)) is not None:
            raise ConfigError(why)
    if evaluation.config.get("fine_tune_steps") and not isinstance(strategy.local, LocalSGD):
        raise ConfigError(f"eval.fine_tune_steps: strategy {strategy.name!r} has no local SGD to fine-tune with "
                          "(its clients compute one full gradient)")
    try:
        _rounds(strategy, fleet, stops, evaluation, eval_every, policy, heterogeneity, observers, result, flight)
    except KeyboardInterrupt:
        log.warning("interrupted after round %d; the run keeps its files up to that round", result.state.round)
        result.stop_reason = "interrupted"
    except WorkersLost as exc:
        log.error("%s: the run stops after round %d, with its files; --resume continues it when workers are back",
                  exc, result.state.round)
        result.stop_reason = "interrupted"
    finally:
        if flight is not None and flight.tasks:
            fleet.cancel(list(flight.tasks), missed=False)
    return result


def _rounds(strategy: Strategy, fleet: Fleet, stops: Sequence[StopCondition], evaluation: _Evaluation,
            eval_every: int, policy: RoundPolicy, heterogeneity: Heterogeneity | None, observers: Sequence[Observer],
            result: LoopResult, flight: Flight | None = None) -> None:
    """The rounds of run_loop, recorded in `result` as they complete."""
    state = result.state
    attempts = 0
    while (reason := _first(stop.before(state) for stop in stops)) is None:
        start = time.perf_counter()
        moved = fleet.traffic()
        got = exchange(strategy, fleet, state, policy.round_deadline, heterogeneity, flight)
        down, up = (after - before for after, before in zip(fleet.traffic(), moved, strict=True))
        t_exchange = time.perf_counter()
        nobody = not got.selected and strategy.sampler.poisson and got.population > 0
        if nobody:
            log.info("round %d: Poisson sampling asked no client", state.round + 1)
        try:
            idle = got.population == 0  # no client was available (heterogeneity): the round is skipped
            agg, rejected, new, why, excluded = _settle(strategy, state, got,
                                                        0 if nobody or idle else policy.min_updates, nobody)
        except PrivacyBudgetExhausted as exc:
            log.warning("privacy budget: %s; the run stops after round %d", exc, state.round)
            result.stop_reason = "privacy_budget"
            return
        if excluded:
            state = replace(state, excluded=tuple(sorted({*state.excluded, *excluded})))
            new = replace(new, excluded=state.excluded) if new is not None else None
            result.state = state
            log.warning("round %d: client%s %s excluded from the run's later rounds", state.round + 1,
                        "s" if len(excluded) > 1 else "", ", ".join(map(str, excluded)))
        t_aggregate = time.perf_counter()
        timings = {"exchange": t_exchange - start, "aggregate": t_aggregate - t_exchange,
                   **(got.secure.timings if got.secure is not None else {})}
        failures = tuple(got.failures + rejected)
        updates = agg.num_clients if agg else 0
        if new is None:
            attempts += 1
            log.warning("round %d failed: %s (attempt %d of %d)", state.round + 1, why, attempts, policy.retries + 1)
            record = RoundRecord(state.round + 1, got.selected, updates, failures, None, up, down,
                                 time.perf_counter() - start, dict(got.conditions), timings, failed=True,
                                 excluded=excluded,
                                 incidents=tuple(incidents(fleet)), why=why or "")
            with interrupts.held():
                result.records.append(record)
                for o in observers:
                    o.round(record, state)
            if attempts > policy.retries:
                if why == NON_FINITE:
                    log.error("the run diverged in round %d: %s, in every one of %d attempts", state.round + 1, why,
                              attempts)
                    result.stop_reason = "diverged"
                    return
                raise AggregationError(f"round {state.round + 1} failed {attempts} times: {why}")
            continue
        attempts = 0
        state = new
        metrics = {k: v for k, v in agg.metrics.items() if k != "train_loss"} if agg else {}
        metrics.update(got.conditions)
        eval_failures: list[Failure] = []
        if state.round % eval_every == 0 or _first(stop.before(state) for stop in stops) is not None:
            result.final_metrics, eval_failures = evaluation.run(state, fleet)
            metrics.update(result.final_metrics)
            timings["evaluate"] = time.perf_counter() - t_aggregate
        record = RoundRecord(state.round, got.selected, updates, failures,
                             agg.metrics.get("train_loss") if agg else None, up, down, time.perf_counter() - start,
                             metrics, timings, excluded=excluded, incidents=tuple(incidents(fleet)),
                             eval_failures=tuple(eval_failures))
        with interrupts.held():  # the round is complete once its record, files and state are all out
            result.records.append(record)
            for o in observers:
                o.round(record, state)
            result.state = state
        if (stop_reason := _first(stop.after(record, state) for stop in stops)) is not None:
            result.stop_reason = stop_reason
            return
    result.stop_reason = reason
    if not any(not r.failed for r in result.records):
        result.final_metrics, _ = evaluation.run(state, fleet)


def _first(reasons: Iterable[str | None]) -> str | None:
    return next((r for r in reasons if r is not None), None)
