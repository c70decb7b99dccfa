"""Client sampling (a strategy part) and the seeds of a round's randomness.

Every random choice of round r derives from (seed, r), and a client's from (seed, r, client id): a run is
reproducible, a resumed run draws what an uninterrupted one would, and a client's batches do not depend on which
other clients run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import checks
from .errors import ConfigError
from .randomness import SecretStream
from .types import ClientInfo

Sampling = Literal["uniform", "samples"]


@dataclass(frozen=True)
class Sampler:
    """Which clients a round asks: `clients_per_round` (None: every available client) or, when set, a `fraction`
    of the available ones; drawn without replacement, uniformly or with probability proportional to sample
    counts ("samples"). With `poisson`, each available client is asked independently with probability
    q = fraction (or clients_per_round / available), so the round's size varies: the sampling that
    differential privacy's amplification-by-sampling analysis assumes.

    `over_selection` = o asks ceil((1 + o) k) clients and ends the round as soon as k of them have replied (the
    rest are cancelled and recorded): a round no longer waits for its slowest clients (Bonawitz et al. 2019)."""

    clients_per_round: int | None = 10
    fraction: float | None = None
    sampling: Sampling = "uniform"
    poisson: bool = False
    over_selection: float = 0.0

    def __post_init__(self) -> None:
        checks.at_least(self, "clients_per_round", 1, optional=True)
        checks.in_range(self, "fraction", 0.0, 1.0, low_open=True, high_open=False, optional=True)
        checks.one_of(self, "sampling", Sampling)
        checks.one_of(self, "poisson", (True, False))
        if self.poisson and self.sampling != "uniform":
            checks.fail(self, "sampling", "Poisson sampling asks each client with the same probability; "
                                          "use sampling = 'uniform'")
        checks.in_range(self, "over_selection", 0.0, 10.0, high_open=False)
        if self.poisson and self.over_selection:
            checks.fail(self, "over_selection", "Poisson sampling's round is whoever was drawn; it cannot be cut "
                                                "short at a number of replies")

    def rate(self, population: int) -> float:
        """The probability q that Poisson sampling asks a client, among `population` available ones."""
        if self.fraction is not None:
            return self.fraction
        if self.clients_per_round is None or population <= 0:
            return 1.0
        return min(1.0, self.clients_per_round / population)

    def expected(self, population: int) -> float:
        """The expected number of clients a round asks: q N with Poisson sampling, else exactly num_selected."""
        return self.rate(population) * population if self.poisson else float(self.num_selected(population))

    def num_selected(self, population: int) -> int:
        """How many clients a round asks (over-selection included)."""
        k = self.enough(population)
        return min(population, math.ceil(k * (1.0 + self.over_selection))) if self.over_selection else k

    def enough(self, population: int) -> int:
        """The replies a round needs: the round's size without over-selection."""
        if self.fraction is not None:
            return max(1, min(population, int(round(self.fraction * population))))
        if self.clients_per_round is None:
            return population
        return min(population, self.clients_per_round)

    def select(self, clients: Sequence[ClientInfo], rng: np.random.Generator | SecretStream, k: int | None = None
               ) -> list[ClientInfo]:
        """`k` clients (default: num_selected), in client-id order; `rng` is the round's seeded generator or, where a
        privacy guarantee rests on who is asked, the server's secret stream."""
        if not clients:
            raise ConfigError("no clients are available to select from")
        ordered = sorted(clients, key=lambda c: c.client_id)
        if self.poisson and k is None:
            asked = rng.random(len(ordered)) < self.rate(len(ordered))
            return [c for c, a in zip(ordered, asked.tolist(), strict=True) if a]
        k = self.num_selected(len(ordered)) if k is None else min(k, len(ordered))
        p = None
        if self.sampling == "samples":
            n = np.array([c.num_examples for c in ordered], dtype=np.float64)
            p = n / n.sum()
            k = min(k, int(np.count_nonzero(p)))
        chosen = rng.choice(len(ordered), size=k, replace=False, p=p)
        return [ordered[i] for i in sorted(chosen)]


def task_seeds(seed: int, round_: int, client_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """The seeds of clients' randomness in one round; each depends only on (seed, round, client id).

    A SeedSequence hash of (seed, round) is spread over client ids by the SplitMix64 finaliser, one vectorised
    step for a whole round (a SeedSequence per client costs ~9 us; a round may have thousands).
    """
    base = np.random.SeedSequence([seed, round_]).generate_state(1, np.uint64)[0]
    with np.errstate(over="ignore"):
        z = base + np.asarray(client_ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(1)  # 63 bits: a valid seed for every torch and numpy generator


def sub_seed(seed: int, index: int) -> int:
    """A seed derived from `seed` for the use `index` names (the transform at that index, DP-SGD's noise): apart
    from every other use of the same seed."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def task_seed(seed: int, round_: int, client_id: int) -> int:
    """The seed of one client's randomness in one round: independent of which other clients run."""
    return int(task_seeds(seed, round_, [client_id])[0])


def round_rng(seed: int, round_: int) -> np.random.Generator:
    """The generator of round `round_`'s server-side draws (which clients)."""
    return np.random.default_rng([seed, round_, 0x5E1EC7])


def server_seed(seed: int, round_: int) -> int:
    """The seed of the server's own randomness in round `round_` (e.g. a server-side transform's noise)."""
    return int(np.random.SeedSequence([seed, round_, 0x5E4E4]).generate_state(1, np.uint64)[0] >> np.uint64(1))
