"""Simulation fleets: clients that live in this process (or its workers, or Ray actors), and test fleets."""

from .choice import make_executor
from .engines import SimOptions, make_fleet
from .local import LocalFleet
from .mock import ChaosFleet, MockFleet
from .population import AppList, LazyPopulation, gaussian_population

__all__ = ["AppList", "ChaosFleet", "LazyPopulation", "LocalFleet", "MockFleet", "SimOptions",
           "gaussian_population", "make_executor", "make_fleet"]
