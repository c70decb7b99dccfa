"""Simulation fleets: clients that live in this process (or its workers), or on a Ray cluster."""

from .engines import ENGINES, EXECUTORS, make_executor, make_fleet
from .local import LocalFleet
from .population import AppList, LazyPopulation, gaussian_population
from .states import DiskStates, MemoryStates

__all__ = ["ENGINES", "EXECUTORS", "AppList", "DiskStates", "LazyPopulation", "LocalFleet", "MemoryStates",
           "gaussian_population", "make_executor", "make_fleet"]
