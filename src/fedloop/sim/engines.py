"""Engines by name ([sim] of the config): the simulation fleet that `fedloop run` and `simulate` build, trained in
this process (or its workers) or by Ray actors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .. import checks
from ..client import DiskStates, MemoryStates
from ..device import CPU
from ..errors import ConfigError
from .choice import ExecutorName
from .local import LocalFleet
from .population import Population
from .ray_cluster import check_address
from .ray_executor import RayExecutor

log = logging.getLogger(__name__)

EngineName = Literal["local", "ray"]


@dataclass(frozen=True)
class SimOptions:
    """How a simulation runs its clients: the `executor` (every choice gives the same result within float
    tolerance; `auto` chooses from the workload alone, so a run repeats to the bit on the same machine), the
    `engine` (this machine, or Ray actors, optionally on a cluster at `ray_address`), `workers` (processes or actors;
    default one per core or per cluster CPU), and `state_dir` to keep clients' persistent state on disk (one file
    per client) instead of in memory."""

    executor: ExecutorName = "auto"
    engine: EngineName = "local"
    ray_address: str | None = None
    workers: int | None = None
    state_dir: str | None = None

    def __post_init__(self) -> None:
        checks.one_of(self, "executor", ExecutorName)
        checks.one_of(self, "engine", EngineName)
        checks.at_least(self, "workers", 1, optional=True)
        check_address(self.ray_address)
        if self.ray_address is not None and self.engine != "ray":
            raise ConfigError(f"sim.ray_address = {self.ray_address!r} is set but sim.engine = {self.engine!r}; "
                              "set sim.engine = 'ray' to run on that cluster", key="ray_address",
                              value=self.ray_address, rule="needs engine = 'ray'")


def make_fleet(population: Population, options: SimOptions = SimOptions(),
               devices: Sequence[torch.device] = (CPU,)) -> LocalFleet:
    """The simulation fleet over `population`: trained in this process (or its workers), or by Ray actors; worker
    processes and actors spread over `devices` (the clients' own device trains in this process)."""
    states = DiskStates(options.state_dir) if options.state_dir is not None else MemoryStates()
    if options.engine == "ray":
        return LocalFleet(population, RayExecutor(population, options.executor, options.ray_address,
                                                  options.workers, devices=devices), states)
    return LocalFleet(population, options.executor, states, options.workers, devices)
