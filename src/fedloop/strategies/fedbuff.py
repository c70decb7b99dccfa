"""FedBuff (Nguyen et al., AISTATS 2022): asynchronous FedAvg with a buffer. The server keeps `concurrency`
clients training at once, each on the model version it was sent; replies are buffered as they arrive, each
update scaled by s(tau), tau = how many server steps happened since its version; after `buffer_size` updates the
server optimizer steps on their weighted mean and the model version increases. `rounds` counts server steps.

Staleness weights s(tau), as the paper takes them from FedAsync (Xie et al. 2019):
  constant    1
  polynomial  (1 + tau) ** -a                              (the paper's choice: a = 0.5)
  hinge       1 when tau <= b, else 1 / (a (tau - b) + 1)
The scaling is not renormalised: stale updates move the model less, which is the point.

The loop's asynchronous exchange (asynchronous.py) keeps the tasks in flight across server steps; the client half
is FedAvg's, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from .. import checks
from ..errors import ConfigError
from ..fleet import ASYNC
from ..types import ServerState, Update
from .base import Strategy, require_mean

Staleness = Literal["constant", "polynomial", "hinge"]


def staleness_weight(kind: Staleness, tau: int, a: float, b: int) -> float:
    """s(tau) of the module docstring."""
    if tau < 0:
        raise ValueError(f"staleness {tau} < 0: an update from a model version the server has not made")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1.0 + tau) ** -a)
    return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)


@dataclass(frozen=True)
class FedBuff(Strategy):
    name: ClassVar[str] = "fedbuff"
    requires: ClassVar[frozenset[str]] = frozenset({ASYNC})

    concurrency: int | None = None
    """Clients training at once (unset: the sampler's round size, strategy.clients_per_round)."""
    buffer_size: int | None = None
    """Updates per server step, K (unset: half the concurrency, rounded up)."""
    staleness: Staleness = "polynomial"
    staleness_a: float = 0.5
    staleness_b: int = 10
    max_staleness: int | None = None
    """An update more server steps old than this is dropped, with the reason (unset: none is too old)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.at_least(self, "concurrency", 1, optional=True)
        checks.at_least(self, "buffer_size", 1, optional=True)
        checks.one_of(self, "staleness", Staleness)
        checks.in_range(self, "staleness_a", 0.0, float("inf"))
        checks.at_least(self, "staleness_b", 0)
        checks.at_least(self, "max_staleness", 0, optional=True)
        if self.concurrency is not None and self.buffer_size is not None and self.buffer_size > self.concurrency:
            checks.fail(self, "buffer_size", f"{self.buffer_size} updates per step cannot come from "
                                             f"{self.concurrency} clients in flight (concurrency)")
        if self.sampler.poisson or self.sampler.over_selection:
            checks.fail(self, "sampler", "FedBuff asks a client whenever a slot frees up: Poisson sampling and "
                                         "over-selection do not apply")
        private = [t.name for t in self.transforms if getattr(t, "private", False)]
        if private:
            why = ("its accountant composes synchronous rounds of sampled clients; FedBuff's server steps take "
                   "whichever clients finish first, so that analysis does not hold")
            raise ConfigError(f"strategy 'fedbuff' cannot be used with {private[0]}: {why}", key="transforms",
                              value=private[0], rule=why)
        require_mean(self, "FedBuff scales each update by its staleness inside a weighted mean")

    def insecure_part(self) -> str | None:
        return ("strategy 'fedbuff': secure aggregation's four stages run in lock-step over one round's clients, "
                "while FedBuff's updates arrive one by one")

    def slots(self, population: int) -> tuple[int, int]:
        """(concurrency, buffer size) for `population` available clients."""
        concurrency = self.concurrency or self.sampler.enough(population)
        buffer = self.buffer_size or -(-concurrency // 2)
        return concurrency, min(buffer, concurrency)

    def weigh(self, update: Update, state: ServerState) -> Update:
        """The update scaled by its staleness weight s(state.round - update.version)."""
        s = staleness_weight(self.staleness, state.round - update.version, self.staleness_a, self.staleness_b)
        if s == 1.0:
            return update
        return replace(update, params={k: v * s if v.is_floating_point() else v for k, v in update.params.items()})
