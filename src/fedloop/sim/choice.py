"""Executors by name (sim.executor): the one a name stands for (auto: what it chooses for the workload, from the
workload alone) and how to build it. Shared by the local fleet, the engines and the Ray actors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, get_args

import torch

from ..device import CPU
from ..errors import ConfigError
from .auto import AutoTimed, choose_executor
from .executors import Executor, Sequential, Vectorized
from .population import Population
from .processes import Processes, default_workers

log = logging.getLogger(__name__)

ExecutorName = Literal["auto", "auto-timed", "sequential", "vectorized", "processes", "processes-vectorized"]


def resolve_executor(name: str, population: Population, workers: int | None = None) -> tuple[str, str]:
    """The executor `name` stands for (auto: the one it chooses for this population's workload, logged with why),
    and how to describe it."""
    if name != "auto":
        return name, name
    clients = population.clients()
    first = population.app(clients[0].client_id)
    chosen, why = choose_executor(first, first.strategy.sampler.num_selected(len(clients)),
                                  workers or default_workers())
    log.info("auto executor: %s (%s)", chosen, why)
    return chosen, f"auto: {chosen}"


def make_executor(name: str, population: Population, workers: int | None = None,
                  devices: Sequence[torch.device] = (CPU,)) -> Executor:
    """An in-process executor; process workers resolve client apps through the population, and spread over
    `devices`."""
    name, _ = resolve_executor(name, population, workers)
    if name == "sequential":
        return Sequential()
    if name == "vectorized":
        return Vectorized()
    if name in ("processes", "processes-vectorized"):
        return Processes(population.app, workers, inner="vectorized" if name.endswith("vectorized")
                         else "sequential", devices=devices)
    if name == "auto-timed":
        return AutoTimed(population.app, workers)
    raise ConfigError(f"executor {name!r} is unknown; allowed: {', '.join(get_args(ExecutorName))}")
