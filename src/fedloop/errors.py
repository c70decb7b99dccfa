"""The exception tree: every error fedloop raises on purpose is a FedloopError."""

from __future__ import annotations


class FedloopError(Exception):
    """Base of every error fedloop raises deliberately; the CLI prints these without a traceback."""


class ConfigError(FedloopError):
    """A configuration key or value is wrong; the message names the key, the value and what is allowed."""


class DataError(FedloopError):
    """A dataset file or array is missing or malformed; the message names the file and the problem."""


class AggregationError(FedloopError):
    """Updates cannot be reduced (no updates, mismatched names or shapes)."""


class TransportError(FedloopError):
    """A message between server and client could not be delivered or decoded."""


class PrivacyBudgetExhausted(FedloopError):
    """The privacy accountant reached the configured ε budget."""


class CheckpointError(FedloopError):
    """A checkpoint or run directory cannot be read."""
