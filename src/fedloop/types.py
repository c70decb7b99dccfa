"""Core value types that travel through a round (see DESIGN.md, "Core abstractions")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

Params = Mapping[str, torch.Tensor]
"""A model's named floating-point tensors, in the model's own order. Matched by name, never by position."""


def in_memory(params: Params) -> bool:
    """Whether the tensors are held in memory (a dict), not read from disk at each lookup (a spooled upload,
    net/spool.py): what may be read whole, several updates at once."""
    return isinstance(params, dict)


def shape_of(params: Params, name: str) -> torch.Size:
    """A tensor's shape, without reading it where `params` knows its shapes (a spooled upload, net/spool.py)."""
    known = getattr(params, "shapes", None)
    return known[name] if known is not None else params[name].shape


ConfigValue = bool | int | float | str | bytes
"""A value of a task's small per-task config map."""

TaskKind = Literal["fit", "evaluate", "secagg"]
"""What a task asks: train, evaluate, or answer one stage of secure aggregation (the broadcast's stage names it)."""


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What the server knows of a client before it asks it anything."""

    client_id: int
    num_examples: int


@dataclass(frozen=True)
class Broadcast:
    """What every task of one exchange shares: the global params of one model version and the strategy's server
    extras (e.g. a control variate). A fleet encodes or ships a broadcast once, whatever the number of its tasks,
    and caches it by `key`: (model version, stage) names its content, so a retried round reuses it."""

    version: int
    """The model version: the round whose aggregation produced `params` (0 for the initial model)."""
    params: Params
    extras: Params = field(default_factory=dict)
    stage: str = "fit"
    """Which exchange of a round this serves ("fit", "evaluate", or a strategy's own, e.g. "probe")."""

    @property
    def key(self) -> tuple[int, str]:
        return self.version, self.stage


@dataclass(frozen=True)
class Task:
    """What the server asks one client to do in one exchange.

    `broadcast` holds the global params, read-only for the client (it trains on its own copy). `seed` drives every
    random choice the client makes (batch order), so a task is reproducible. `config` is a small per-task map
    (e.g. which split to evaluate on).
    """

    client_id: int
    round: int
    kind: TaskKind
    broadcast: Broadcast
    seed: int
    config: Mapping[str, ConfigValue] = field(default_factory=dict)

    @property
    def params(self) -> Params:
        return self.broadcast.params

    @property
    def extras(self) -> Params:
        return self.broadcast.extras


@dataclass(frozen=True)
class Update:
    """A client's answer to a fit task: a gradient or pseudo-gradient W_global - W_local."""

    client_id: int
    round: int
    params: Params
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)
    version: int = 0
    """The model version the client trained from (its task's broadcast version)."""


@dataclass(frozen=True)
class Evaluation:
    """A client's answer to an evaluate task: metrics on one of its local splits."""

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


@dataclass(frozen=True)
class Message:
    """A client's answer to a protocol stage (secure aggregation's keys, shares, masked input): opaque bytes that
    the protocol's server side parses and checks; the fleet checks only that their size is the one the task set."""

    client_id: int
    round: int
    stage: str
    data: bytes


Reply = Update | Evaluation | Failure | Message


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
    agg_state: Mapping[str, torch.Tensor] = field(default_factory=dict)
    transform_state: Mapping[str, torch.Tensor] = field(default_factory=dict)
    """The aggregator's and the server-side transforms' states after this reduction."""


@dataclass(frozen=True)
class ServerState:
    """Everything the server needs to continue a run exactly: checkpointed as a whole.

    Random choices of round r are drawn from a generator seeded by (seed, r), so no RNG state has to be
    carried: a resumed run draws the same clients as an uninterrupted one. The parts' states are tensors keyed by
    name: the server optimizer's, the aggregator's, and the server-side transforms' ("<index>/<name>").
    """

    round: int
    params: Params
    opt_state: Mapping[str, torch.Tensor] = field(default_factory=dict)
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)
    seed: int = 0
    agg_state: Mapping[str, torch.Tensor] = field(default_factory=dict)
    transform_state: Mapping[str, torch.Tensor] = field(default_factory=dict)
    excluded: tuple[int, ...] = ()
    """Clients refused for good: an update of theirs alone would have broken a round (fedloop/culprits.py)."""


@dataclass(frozen=True)
class RoundRecord:
    """What is logged for one round (one line of metrics.jsonl)."""

    round: int
    selected: tuple[int, ...]
    updates: int
    failures: tuple[Failure, ...]
    train_loss: float | None
    bytes_up: int
    bytes_down: int
    seconds: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    failed: bool = False
    excluded: tuple[int, ...] = ()
    """Clients excluded from the run's later rounds in this round."""
    incidents: tuple[str, ...] = ()
    """Work lost with a worker in this round (a dead process, actor or node) and what became of it."""
    eval_failures: tuple[Failure, ...] = ()
    """Clients whose federated evaluation failed in this round."""
    why: str = ""
    """Why a failed round failed."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "round": self.round,
            "clients": self.updates,
            "failures": len(self.failures),
            "train_loss": self.train_loss,
        }
        out.update(self.metrics)
        out.update(bytes_up=self.bytes_up, bytes_down=self.bytes_down, seconds=round(self.seconds, 6),
                   selected=list(self.selected))
        if self.failures:
            out["failed_clients"] = [{"client": f.client_id, "reason": f.reason} for f in self.failures]
        out["timings"] = {k: round(v, 6) for k, v in self.timings.items()}
        if self.excluded:
            out["excluded"] = list(self.excluded)
        if self.eval_failures:
            out["eval_failures"] = len(self.eval_failures)
            out["eval_failed_clients"] = [{"client": f.client_id, "reason": f.reason} for f in self.eval_failures]
        if self.incidents:
            out["incidents"] = list(self.incidents)
        if self.failed:
            out["failed"] = True
            if self.why:
                out["failed_because"] = self.why
        return out


@dataclass
class RunResult:
    """What a run returns: the final server state and model, the per-round history and why it stopped."""

    state: ServerState
    model: nn.Module
    history: list[dict[str, Any]]
    stop_reason: str
    metrics: dict[str, float]
    seconds: float
    out: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
