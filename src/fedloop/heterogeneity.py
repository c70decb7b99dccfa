"""System heterogeneity of a federation ([heterogeneity]): which clients are available in a round, and which of a
round's clients straggle (do only part of their local work), seeded from (seed, round) so a run is reproducible.

Availability is a trace: `always`; `bernoulli` (each client on in a round with probability `rate`); `diurnal` (each
client on for `duty` of every `period` rounds, at a seeded phase of its own); or a CSV file of (client, round) rows
naming who is on when. The sampler draws only among the available clients; a round with none is skipped, the model
unchanged.

Stragglers (the FedProx paper's system heterogeneity): a seeded fraction `stragglers` of each round's fit tasks do
fewer local steps than their full E epochs' worth, uniform in 1 .. full - 1 (a client whose full work is one step
cannot do less). With partial_work = "drop" their updates are lost (FedAvg's handling: the round goes on without
them); with "keep" the partial updates are aggregated (FedProx's and FedNova's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from . import checks
from .errors import ConfigError
from .store import csv_rows
from .types import ClientInfo, Failure, Task

if TYPE_CHECKING:
    from .strategies.base import Strategy

MAX_STEPS = "max_steps"
"""The fit-task config key that stops a straggler's local training after that many steps."""
TRACES = ("always", "bernoulli", "diurnal")
_AVAILABLE, _PHASE, _STRAGGLE = 0xA7A1, 0xD1A1, 0x5724


@dataclass(frozen=True)
class Heterogeneity:
    stragglers: float = 0.0
    """The fraction of each round's fit tasks that do partial work."""
    partial_work: Literal["drop", "keep"] = "drop"
    """What becomes of a straggler's partial update: lost (FedAvg), or aggregated (FedProx, FedNova)."""
    availability: str = "always"
    """always | bernoulli | diurnal | the path of a CSV of (client, round) rows."""
    rate: float = 0.5
    """bernoulli: the probability that a client is on in a round."""
    period: int = 24
    """diurnal: the rounds of one on/off cycle."""
    duty: float = 0.5
    """diurnal: the share of the cycle a client is on."""
    trace: frozenset[tuple[int, int]] = field(default=frozenset(), init=False, compare=False, repr=False)
    """A CSV availability trace, read when the options are made."""

    def __post_init__(self) -> None:
        checks.in_range(self, "stragglers", 0.0, 1.0, high_open=False)
        checks.one_of(self, "partial_work", ("drop", "keep"))
        checks.in_range(self, "rate", 0.0, 1.0, low_open=True, high_open=False)
        checks.at_least(self, "period", 1)
        checks.in_range(self, "duty", 0.0, 1.0, low_open=True, high_open=False)
        if self.availability not in TRACES:
            if not self.availability.endswith(".csv"):
                checks.fail(self, "availability", f"expected one of {', '.join(TRACES)} or the path of a .csv "
                                                  "file of (client, round) rows")
            object.__setattr__(self, "trace", read_trace(Path(self.availability)))

    @property
    def active(self) -> bool:
        return self.stragglers > 0 or self.availability != "always"

    def check(self, strategy: Strategy) -> str | None:
        """Why stragglers cannot be simulated for `strategy` (None when they can)."""
        if self.stragglers == 0:
            return None
        if getattr(strategy.local, "epochs", None) is None:
            return "its clients compute one full gradient, which has no partial work"
        if any(t.name == "dp_sgd" for t in strategy.transforms):
            return "DP-SGD accounts for every client's full number of steps"
        return None

    def available(self, clients: Sequence[ClientInfo], seed: int, round_: int) -> list[ClientInfo]:
        """The clients that are on in round `round_`."""
        if self.availability == "always" or not clients:
            return list(clients)
        ids = np.array([c.client_id for c in clients], dtype=np.int64)
        if self.availability == "bernoulli":
            on = np.random.default_rng([seed, _AVAILABLE, round_]).random(int(ids.max()) + 1)[ids] < self.rate
        elif self.availability == "diurnal":
            phase = np.random.default_rng([seed, _PHASE]).integers(self.period, size=int(ids.max()) + 1)[ids]
            on = (round_ + phase) % self.period < max(1, round(self.duty * self.period))
        else:
            on = np.array([(int(c), round_) in self.trace for c in ids], dtype=bool)
        return [c for c, ok in zip(clients, on.tolist(), strict=True) if ok]

    def straggle(self, tasks: Sequence[Task], sizes: dict[int, int], strategy: Strategy, seed: int
                 ) -> tuple[list[Task], list[Failure], int]:
        """The fit tasks to run (stragglers' with their step caps, or without the stragglers under "drop"), the
        dropped stragglers as failures, and how many straggled."""
        fits = [t for t in tasks if t.kind == "fit"]
        if self.stragglers == 0 or not fits:
            return list(tasks), [], 0
        rng = np.random.default_rng([seed, _STRAGGLE, fits[0].round])
        k = int(round(self.stragglers * len(fits)))
        chosen = {fits[i].client_id for i in rng.choice(len(fits), size=k, replace=False).tolist()}
        out: list[Task] = []
        dropped: list[Failure] = []
        count = 0
        for t in tasks:
            full = self._full_steps(strategy, sizes.get(t.client_id, 0)) if t.client_id in chosen else 0
            if full < 2:  # not a straggler, or one whose full work is a single step
                out.append(t)
                continue
            count += 1
            cap = int(rng.integers(1, full))  # uniform in 1 .. full - 1
            if self.partial_work == "drop":
                dropped.append(Failure(t.client_id, t.round, f"straggler: {cap} of {full} local steps done, "
                                                             "its update dropped (partial_work = 'drop')"))
            else:
                out.append(replace(t, config={**t.config, MAX_STEPS: cap}))
        return out, dropped, count

    @staticmethod
    def _full_steps(strategy: Strategy, num_examples: int) -> int:
        local = strategy.local
        batch = getattr(local, "batch_size", "full")
        per_epoch = math.ceil(num_examples / batch) if isinstance(batch, int) else 1
        return int(getattr(local, "epochs", 1)) * per_epoch


def read_trace(path: Path) -> frozenset[tuple[int, int]]:
    """The (client, round) rows of an availability CSV (an optional header `client,round`)."""
    rows: set[tuple[int, int]] = set()
    for line, row in csv_rows(path, "heterogeneity.availability", ("client", "round")):
        try:
            client, round_ = (int(v) for v in row)
        except ValueError:
            raise ConfigError(f"{path}, line {line}: {','.join(row)!r} is not a (client, round) pair of integers"
                              ) from None
        if client < 0 or round_ < 1:
            raise ConfigError(f"{path}, line {line}: client {client}, round {round_}: clients count from 0 and "
                              "rounds from 1")
        rows.add((client, round_))
    if not rows:
        raise ConfigError(f"{path}: the availability trace names no (client, round) pair")
    return frozenset(rows)
