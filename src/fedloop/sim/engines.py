"""Executors and engines by name: what `fedloop run` and `simulate` pick from the config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .auto import Auto
from .executors import Executor, Sequential, Vectorized
from .population import Population
from .processes import Processes
from .states import DiskStates, MemoryStates

if TYPE_CHECKING:
    from .local import LocalFleet
    from .ray_fleet import RayFleet

EXECUTORS = ("auto", "sequential", "vectorized", "processes", "processes-vectorized")
ENGINES = ("local", "ray")


def make_executor(name: str, fleet: LocalFleet, workers: int | None = None) -> Executor:
    """An executor for `fleet`; process workers resolve client apps through the fleet's population."""
    if name == "sequential":
        return Sequential()
    if name == "vectorized":
        return Vectorized()
    if name in ("processes", "processes-vectorized"):
        return Processes(fleet.population.app, workers, inner="vectorized" if name.endswith("vectorized")
                         else "sequential")
    if name == "auto":
        return Auto(fleet.population.app, workers)
    raise ConfigError(f"executor {name!r} is unknown; allowed: {', '.join(EXECUTORS)}")


def make_fleet(population: Population, *, executor: str = "auto", engine: str = "local",
               ray_address: str | None = None, workers: int | None = None,
               state_dir: str | Path | None = None) -> LocalFleet | RayFleet:
    """A simulation fleet over `population`: in this process (local) or on a Ray cluster (ray).

    Client state lives in memory, or on disk under `state_dir` (one file per client that has state).
    """
    from .local import LocalFleet
    from .ray_fleet import RayFleet

    states = DiskStates(state_dir) if state_dir is not None else MemoryStates()
    if engine == "local":
        return LocalFleet(population, executor, states, workers)
    if engine == "ray":
        return RayFleet(population, executor, ray_address, workers, states)
    raise ConfigError(f"engine {engine!r} is unknown; allowed: {', '.join(ENGINES)}")
