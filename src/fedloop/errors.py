"""The exception tree: every error fedloop raises on purpose is a FedloopError."""

from __future__ import annotations


class FedloopError(Exception):
    """Base of every error fedloop raises deliberately; the CLI prints these without a traceback."""


class ConfigError(FedloopError):
    """A configuration key or value is wrong; the message names the key, the value and what is allowed.

    When it concerns one field of a dataclass, `key`, `value` and `rule` say which, so that the config layer can
    name the field by its config section instead of its class.
    """

    def __init__(self, message: str, key: str | None = None, value: object = None, rule: str | None = None):
        super().__init__(message)
        self.key, self.value, self.rule = key, value, rule


class DataError(FedloopError):
    """A dataset file or array is missing or malformed; the message names the file and the problem."""


class AggregationError(FedloopError):
    """Updates cannot be reduced (no updates, mismatched names or shapes), or rounds keep failing."""


class TransportError(FedloopError):
    """A message between server and client could not be delivered or decoded."""


class CheckpointError(FedloopError):
    """A checkpoint or run directory cannot be read."""


class PrivacyBudgetExhausted(FedloopError):
    """Releasing another round would exceed the privacy budget (privacy.max_epsilon); nothing of it is released."""


class WorkersLost(FedloopError):
    """A simulation has no worker left to train on (every Ray actor lost, none can start); the run stops as
    interrupted with its files, and resumes when workers are back."""
