"""Core value types that travel through a round (see DESIGN.md, "Core abstractions")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Params = Mapping[str, torch.Tensor]
"""A model's named floating-point tensors, in the model's own order. Matched by name, never by position."""

EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What the server knows of a client before it asks it anything."""

    client_id: int
    num_examples: int


@dataclass(frozen=True)
class Task:
    """What the server asks one client to do in one round.

    `params` are the global params, read-only for the client (it trains on its own copy).
    `seed` drives every random choice the client makes (batch order), so a task is reproducible.
    `extras` carries strategy-specific server tensors (e.g. a control variate).
    """

    client_id: int
    round: int
    kind: Literal["fit", "evaluate"]
    params: Params
    seed: int
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Update:
    """A client's answer to a fit task: a gradient or pseudo-gradient W_global - W_local."""

    client_id: int
    round: int
    params: Params
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """A client's answer to an evaluate task: metrics on its local test split."""

    client_id: int
    round: int
    num_examples: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Failure:
    """A client that did not answer usefully; logged per client, never raised."""

    client_id: int
    round: int
    reason: str


Reply = Update | Evaluation | Failure


@dataclass(frozen=True)
class Aggregate:
    """The reduction of one round's updates."""

    params: Params
    num_clients: int
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)
    population: int = 0
    """The clients available when the round was configured (0: unknown)."""


@dataclass(frozen=True)
class ServerState:
    """Everything the server needs to continue a run exactly: checkpointed as a whole.

    Random choices of round r are drawn from a generator seeded by (seed, r), so no RNG state
    has to be carried: a resumed run draws the same clients as an uninterrupted one.
    """

    round: int
    params: Params
    opt_state: Mapping[str, torch.Tensor] = field(default_factory=dict)
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True)
class RoundRecord:
    """What is logged for one round (one line of metrics.jsonl)."""

    round: int
    clients: int
    failures: int
    train_loss: float | None
    bytes_up: int
    bytes_down: int
    seconds: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    failed: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "round": self.round,
            "clients": self.clients,
            "failures": self.failures,
            "train_loss": self.train_loss,
        }
        out.update(self.metrics)
        out.update(bytes_up=self.bytes_up, bytes_down=self.bytes_down, seconds=round(self.seconds, 6))
        if self.failed:
            out["failed"] = True
        return out
