"""One server step of an asynchronous strategy (FedBuff), for the round loop: keep `concurrency` fit tasks open
across steps, refill the slots that freed up with tasks on the current model, and collect replies as they arrive
until the buffer holds `buffer_size` updates. Replies are handed to the same reduction as a synchronous round's;
the strategy weighs each update by its staleness there (Strategy.weigh).

In simulation the virtual clock (sim/clock.py) orders arrivals; over gRPC they come as clients finish. A task open
longer than the round deadline (when one is set) is cancelled and its client fails, so a stalled client cannot hold
a slot for ever.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .fleet import Fleet
from .strategies.base import Strategy
from .types import ClientInfo, Failure, Reply, ServerState, Task, Update

log = logging.getLogger(__name__)


@dataclass
class Flight:
    """The fit tasks open across server steps: client id -> (task, when it was submitted, monotonic seconds)."""

    tasks: dict[int, tuple[Task, float]] = field(default_factory=dict)

    def add(self, tasks: list[Task]) -> None:
        now = time.monotonic()
        self.tasks.update((t.client_id, (t, now)) for t in tasks)

    def answers(self, reply: Reply) -> bool:
        """Whether `reply` answers the client's task in flight (and closes it)."""
        held = self.tasks.get(reply.client_id)
        if held is None or held[0].round != reply.round:
            return False
        del self.tasks[reply.client_id]
        return True


@dataclass
class Step:
    """What one server step collected."""

    replies: list[Reply]
    conditions: dict[str, float]


def refusal(strategy: Strategy, federated_eval: bool, stragglers: float) -> str | None:
    """Why an asynchronous `strategy` cannot run with these evaluation and heterogeneity settings, or None."""
    if federated_eval:
        return (f"eval.federated = true: strategy.name = {strategy.name!r} keeps its clients training between server "
                "steps, so they are not there to evaluate on their local splits; set eval.federated = false (the "
                "held-out test set still evaluates)")
    if stragglers:
        return (f"heterogeneity.stragglers: strategy.name = {strategy.name!r} is asynchronous; slow clients are "
                "simulated by [async] durations, and partial work is for synchronous rounds")
    return None


def refill(strategy: Strategy, state: ServerState, idle: list[ClientInfo], free: int) -> list[Task]:
    """Fit tasks on the current model for `free` of the `idle` clients: the sampler's draw of that many."""
    return strategy.tasks(state, strategy.sampler.select(idle, strategy.sampling_draws(state), k=free))


def too_stale(strategy: Strategy, update: Update, state: ServerState) -> str | None:
    limit = getattr(strategy, "max_staleness", None)
    tau = state.round - update.version
    if limit is not None and tau > limit:
        return f"its update is from model version {update.version}, {tau} server steps old; max_staleness is {limit}"
    return None


def step(strategy: Strategy, fleet: Fleet, state: ServerState, available: list[ClientInfo], flight: Flight,
         deadline: float | None) -> Step:
    """Refill, then collect until the buffer holds its updates (or no task is open, or the deadline passes)."""
    slots = strategy.slots(len(available))
    assert slots is not None  # the loop calls step for asynchronous strategies only
    concurrency, buffer = slots
    replies: list[Reply] = []
    if deadline is not None:  # a stalled client does not hold its slot for ever
        now = time.monotonic()
        late = [cid for cid, (_, since) in flight.tasks.items() if now - since > deadline]
        for task in fleet.cancel(late):
            flight.tasks.pop(task.client_id, None)
            replies.append(Failure(task.client_id, task.round, f"no reply within the {deadline:g} s deadline"))
    until = None if deadline is None else time.monotonic() + deadline
    updates = 0
    while True:
        busy = set(flight.tasks)
        idle = [c for c in available if c.client_id not in busy]
        free = min(concurrency - len(busy), len(idle))
        if free > 0:
            tasks = refill(strategy, state, idle, free)
            fleet.submit(tasks)
            flight.add(tasks)
        if not flight.tasks or (until is not None and time.monotonic() >= until):
            break
        got = fleet.collect(until, buffer - updates)
        for r in got:
            if not flight.answers(r):
                continue
            if isinstance(r, Update) and (why := too_stale(strategy, r, state)) is not None:
                log.warning("step %d: dropped the update of client %d: %s", state.round + 1, r.client_id, why)
                r = Failure(r.client_id, r.round, f"update dropped: {why}")
            replies.append(r)
            updates += isinstance(r, Update)
        if not got or updates >= buffer:
            break
    taus = [state.round - r.version for r in replies if isinstance(r, Update)]
    conditions = {"in_flight": float(len(flight.tasks)), "staleness_mean": sum(taus) / len(taus) if taus else 0.0,
                  "staleness_max": float(max(taus, default=0))}
    return Step(replies, conditions)
