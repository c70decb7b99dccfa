"""Transforms: what happens to updates between local training and the server optimizer, in the pfl-research
shape. On the client, each transform's `client` step runs in order before upload (clip, compress, add local noise,
mask). On the server, each transform's `server_update` step runs in order on every received update before
reduction (verify, or clip where the client is not trusted to), and each `server_aggregate` step runs in reverse
order on the aggregate (central noise, decompress, unmask). Each is seeded by (seed, round, client) through the
task's seed, and keeps its server state in ServerState.transform_state under "<index>/". Privacy, compression and
secure aggregation are transforms, never special cases in the loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch

from . import checks
from .client.training import SGDProgram
from .params import Scaled, norm
from .secagg.vector import SecureSum
from .types import ConfigValue, Params, Task, Update


@dataclass(frozen=True)
class RoundInfo:
    """What a server-side aggregate step knows of its round besides the reduced update."""

    round: int
    updates: Sequence[Update]
    """The updates reduced (after every server_update), in client-id order."""
    population: int
    """The clients available when the round was configured."""
    expected: float
    """The sampler's expected number of clients: q N (Poisson sampling) or k (fixed-size)."""
    sampling: Literal["fixed", "poisson"]
    program: SGDProgram
    """The strategy's local-training program (batch size, epochs), as the clients run it."""
    secure: SecureSum | None = None
    """Under secure aggregation: what the round's sum is made of (survivors, the noise the clients added)."""


class Transform:
    """The shared base: every step is the identity, so a transform overrides only the ones it needs."""

    name: ClassVar[str] = "transform"

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        """The transform's initial server state (tensors by name)."""
        return {}

    def check(self, strategy: Any) -> str | None:
        """Why this transform cannot be part of `strategy` (None when it can). The strategy is a
        strategies.base.Strategy, which imports this module: transforms that inspect it (privacy/) live above it."""
        return None

    def task_config(self, state: Mapping[str, torch.Tensor]) -> dict[str, ConfigValue]:
        """Entries for every fit task's config (e.g. the round's clip norm), from the transform's server state."""
        return {}

    def program(self, task: Task, program: SGDProgram) -> SGDProgram:
        """On the client, before training: the local-training program to run (e.g. with DP-SGD's clipping)."""
        return program

    def client(self, task: Task, update: dict[str, torch.Tensor], seed: int
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """On the client, before upload: the transformed update and metrics to report with it."""
        return update, {}

    def server_update(self, update: Update, state: Mapping[str, torch.Tensor]) -> Update | str:
        """On the server, on one received update before reduction: the update, or why it is rejected."""
        return update

    def server_aggregate(self, params: dict[str, torch.Tensor], state: dict[str, torch.Tensor], seed: int,
                         info: RoundInfo
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
        """On the server, on the reduced update: new params, new state, metrics for the round record."""
        return params, state, {}

    def client_noise(self) -> tuple[float, float] | None:
        """Distributed DP: (noise multiplier, L2 clip norm) of the noise the clients add inside secure aggregation's
        encoding; None for every other transform."""
        return None

    def exhausted(self, state: Mapping[str, torch.Tensor]) -> str | None:
        """Why the run must stop before another round (a privacy budget spent), or None."""
        return None

    def summary(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """What summary.json says of this transform after the run."""
        return {}


def own_state(transform_state: Mapping[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """The state of the transform at `index` (its keys without the "<index>/" prefix)."""
    prefix = f"{index}/"
    return {k[len(prefix):]: v for k, v in transform_state.items() if k.startswith(prefix)}


CLIP_TOLERANCE = 1e-4
"""Relative slack of the server's check of client-side clipping (float32 rounding of the scaled update)."""


def over_clip_norm(params: Params, bound: float) -> str | None:
    """Why an update its client had to clip to `bound` is refused (None when it is within float rounding)."""
    n = norm(params)
    if not n <= bound * (1 + CLIP_TOLERANCE):
        return f"update norm {n:.6g} exceeds the clip norm {bound:g} the client must apply"
    return None


def clip_to_norm(params: Params, max_norm: float) -> tuple[Params, float, bool]:
    """`params` scaled to L2 norm at most `max_norm` (over all tensors together), its norm before, and whether it
    was scaled; a ValueError when the norm is not finite."""
    n = norm(params)
    if not math.isfinite(n):
        raise ValueError(f"the update's norm is {n}")
    if n <= max_norm:
        return params, n, False
    return Scaled(params, max_norm / n), n, True


@dataclass(frozen=True)
class Clip(Transform):
    """Clip every update to L2 norm `max_norm`, over all its tensors together (fixed clipping).

    where="client": the client clips before upload, so the server never sees an unclipped update; the server
    rejects an update whose norm exceeds max_norm (beyond float rounding). where="server": the server clips each
    update as it arrives, before reduction. Each clipped update reports `update_norm` (before clipping) and
    `clipped` (1 or 0), averaged over the round's clients by examples.
    """

    name: ClassVar[str] = "clip"
    max_norm: float = 1.0
    where: Literal["client", "server"] = "client"

    def __post_init__(self) -> None:
        checks.positive(self, "max_norm")
        checks.one_of(self, "where", ("client", "server"))

    def _clip(self, params: Params) -> tuple[Params, dict[str, float]]:
        clipped, n, scaled = clip_to_norm(params, self.max_norm)
        return clipped, {"update_norm": n, "clipped": float(scaled)}

    def client(self, task: Task, update: dict[str, torch.Tensor], seed: int
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        if self.where != "client":
            return update, {}
        clipped, metrics = self._clip(update)
        return dict(clipped), metrics

    def server_update(self, update: Update, state: Mapping[str, torch.Tensor]) -> Update | str:
        if self.where == "client":
            return over_clip_norm(update.params, self.max_norm) or update
        try:
            clipped, metrics = self._clip(update.params)
        except ValueError as exc:
            return str(exc)
        return replace(update, params=clipped, metrics={**update.metrics, **metrics})


TRANSFORMS: dict[str, type[Transform]] = {Clip.name: Clip}
"""What [[transforms]] may name; privacy has its own section ([privacy], privacy/options.py)."""
