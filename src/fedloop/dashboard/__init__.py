"""A live dashboard of a run directory (`fedloop dashboard RUN_DIR`, `fedloop run --dashboard`): server.py serves,
static/ holds the page, its script and the vendored uPlot."""

from .server import Dashboard

__all__ = ["Dashboard"]
