"""Populations: where a fleet gets its client apps, held in a list or built on demand from a client id."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from torch import nn

from ..client import ClientApp, LossFn
from ..data.examples import Examples
from ..data.gaussian import GaussianTeacher
from ..errors import ConfigError
from ..strategies.base import Strategy
from ..types import ClientInfo


class Population(Protocol):
    def clients(self) -> list[ClientInfo]: ...

    def app(self, client_id: int) -> ClientApp: ...


class AppList:
    """Apps built up front (their data are index views into shared arrays, so they cost little)."""

    def __init__(self, apps: Sequence[ClientApp]):
        self._apps = {a.client_id: a for a in apps}
        if len(self._apps) != len(apps):
            raise ConfigError("client ids in a fleet must be unique")
        self._infos = [a.info() for a in apps]

    def clients(self) -> list[ClientInfo]:
        return list(self._infos)

    def app(self, client_id: int) -> ClientApp:
        return self._apps[client_id]


class LazyPopulation:
    """Clients 0..N-1 whose apps are built when a task reaches them and dropped afterwards.

    Only the per-client sample counts are held (the server needs them to sample and weight), so memory
    follows the clients sampled per round, not the population.
    """

    def __init__(self, sizes: np.ndarray, make_app: Callable[[int], ClientApp]):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.make_app = make_app
        self._infos: list[ClientInfo] | None = None

    def __len__(self) -> int:
        return len(self.sizes)

    def clients(self) -> list[ClientInfo]:
        if self._infos is None:
            self._infos = [ClientInfo(i, n) for i, n in enumerate(self.sizes.tolist())]
        return self._infos

    def app(self, client_id: int) -> ClientApp:
        if not 0 <= client_id < len(self.sizes):
            raise KeyError(client_id)
        return self.make_app(client_id)


def gaussian_population(num_clients: int, samples: int | tuple[int, int], strategy: Strategy,
                        model_fn: Callable[[], nn.Module], loss_fn: LossFn, *, teacher: GaussianTeacher,
                        seed: int = 0) -> LazyPopulation:
    """`num_clients` clients whose data are drawn from `teacher` on demand, from (seed, client id).

    `samples` is every client's count, or a (low, high) range drawn once per client from the seed.
    """
    if isinstance(samples, int):
        sizes = np.full(num_clients, samples, dtype=np.int64)
    else:
        sizes = np.random.default_rng([seed, 0x512E]).integers(samples[0], samples[1] + 1, num_clients)

    def make_app(cid: int) -> ClientApp:
        x, y = teacher.sample(int(sizes[cid]), [seed, cid])
        return ClientApp(cid, strategy, model_fn, loss_fn, train=Examples.all(x, y))

    return LazyPopulation(sizes, make_app)
