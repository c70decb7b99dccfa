"""The shared base of every strategy: client sampling, aggregation and a server-optimizer step.

A strategy is a frozen dataclass of hyperparameters with four parts (DESIGN.md):
`init` (initial server state), `configure` (which clients do what this round), `local_update` (the
client half) and `apply` (the server half), plus `aggregate`. A new algorithm overrides one or two.
It does no I/O and never sees threads, sockets, clocks or files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from ..aggregators import Weighting, weighted_mean
from ..errors import ConfigError
from ..local import ClientContext
from ..params import clone
from ..server_opt import ServerOptimizer, sgd
from ..types import Aggregate, ClientInfo, Params, ServerState, Task, Update


@dataclass(frozen=True)
class LocalSGD:
    """Hyperparameters of the client's local optimizer; batch_size None means the full local dataset."""

    epochs: int = 1
    batch_size: int | None = 10
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0


def task_seed(seed: int, round_: int, client_id: int) -> int:
    """The seed of one client's randomness in one round: independent of which other clients run."""
    return int(np.random.SeedSequence([seed, round_, client_id]).generate_state(1)[0])


def round_rng(seed: int, round_: int) -> np.random.Generator:
    return np.random.default_rng([seed, round_, 0x5E1EC7])


@dataclass(frozen=True)
class Strategy:
    """Sampling, weighting and the server step shared by the FedAvg family."""

    name: ClassVar[str] = "base"

    clients_per_round: int | None = 10
    fraction: float | None = None
    sampling: Literal["uniform", "samples"] = "uniform"
    weighting: Weighting = "samples"
    server_lr: float = 1.0
    server_momentum: float = 0.0
    local: LocalSGD = field(default_factory=LocalSGD)

    def server_optimizer(self) -> ServerOptimizer:
        return sgd(self.server_lr, self.server_momentum)

    def init(self, params: Params, seed: int) -> ServerState:
        params = clone(params)
        return ServerState(round=0, params=params, opt_state=self.server_optimizer().init(params), seed=seed)

    def num_selected(self, population: int) -> int:
        if self.fraction is not None:
            return max(1, min(population, int(round(self.fraction * population))))
        if self.clients_per_round is None:
            return population
        return min(population, self.clients_per_round)

    def select(self, clients: Sequence[ClientInfo], rng: np.random.Generator) -> list[ClientInfo]:
        """Uniformly without replacement, or with probability proportional to sample counts."""
        if not clients:
            raise ConfigError("no clients are available to select from")
        ordered = sorted(clients, key=lambda c: c.client_id)
        k = self.num_selected(len(ordered))
        p = None
        if self.sampling == "samples":
            n = np.array([c.num_examples for c in ordered], dtype=np.float64)
            p = n / n.sum()
            k = min(k, int(np.count_nonzero(p)))
        chosen = rng.choice(len(ordered), size=k, replace=False, p=p)
        return [ordered[i] for i in sorted(chosen)]

    def configure(self, state: ServerState, clients: Sequence[ClientInfo]) -> list[Task]:
        """The fit tasks of round state.round + 1."""
        r = state.round + 1
        chosen = self.select(clients, round_rng(state.seed, r))
        return [Task(c.client_id, r, "fit", state.params, task_seed(state.seed, r, c.client_id))
                for c in chosen]

    def local_update(self, task: Task, ctx: ClientContext) -> Update:
        raise NotImplementedError

    def aggregate(self, updates: Sequence[Update]) -> Aggregate:
        return weighted_mean(updates, self.weighting)

    def apply(self, state: ServerState, agg: Aggregate) -> ServerState:
        """W <- server_opt.step(W, aggregate): W - eta * grad_avg for plain SGD."""
        params, opt_state = self.server_optimizer().step(state.params, agg.params, state.opt_state)
        return ServerState(round=state.round + 1, params=params, opt_state=opt_state,
                           extras=state.extras, seed=state.seed)
