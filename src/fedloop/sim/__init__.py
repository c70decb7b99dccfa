"""Simulation fleets: clients that live in this process (or its workers)."""

from .local import LocalFleet

__all__ = ["LocalFleet"]
