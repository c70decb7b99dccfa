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
from ..local import ClientContext, SGDProgram, run_program
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


def task_seeds(seed: int, round_: int, client_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """The seeds of clients' randomness in one round; each depends only on (seed, round, client id).

    A SeedSequence hash of (seed, round) is spread over client ids by the SplitMix64 finaliser, one
    vectorised step for a whole round (a SeedSequence per client costs ~9 us; a round may have thousands).
    """
    base = np.random.SeedSequence([seed, round_]).generate_state(1, np.uint64)[0]
    with np.errstate(over="ignore"):
        z = base + np.asarray(client_ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(1)  # 63 bits: a valid seed for every torch and numpy generator


def task_seed(seed: int, round_: int, client_id: int) -> int:
    """The seed of one client's randomness in one round: independent of which other clients run."""
    return int(task_seeds(seed, round_, [client_id])[0])


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
        seeds = task_seeds(state.seed, r, [c.client_id for c in chosen]).tolist()
        return [Task(c.client_id, r, "fit", state.params, s) for c, s in zip(chosen, seeds, strict=True)]

    def client_program(self, task: Task) -> SGDProgram | None:
        """The client half as local SGD declared as data (any executor can batch it), or None when the
        strategy's client half is something else and it overrides `local_update` instead."""
        return None

    def local_update(self, task: Task, ctx: ClientContext) -> Update:
        program = self.client_program(task)
        if program is None:
            raise NotImplementedError(f"strategy {self.name!r} defines neither client_program nor local_update")
        return run_program(program, task, ctx)

    def sgd_program(self, **overrides: object) -> SGDProgram:
        """This strategy's LocalSGD hyperparameters as an SGDProgram."""
        o = self.local
        return SGDProgram(**{"epochs": o.epochs, "batch_size": o.batch_size, "lr": o.lr, "momentum": o.momentum,
                             "weight_decay": o.weight_decay, **overrides})

    def aggregate(self, updates: Sequence[Update]) -> Aggregate:
        return weighted_mean(updates, self.weighting)

    def apply(self, state: ServerState, agg: Aggregate) -> ServerState:
        """W <- server_opt.step(W, aggregate): W - eta * grad_avg for plain SGD."""
        params, opt_state = self.server_optimizer().step(state.params, agg.params, state.opt_state)
        return ServerState(round=state.round + 1, params=params, opt_state=opt_state,
                           extras=state.extras, seed=state.seed)
