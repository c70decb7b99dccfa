"""Local differential privacy: each client clips its update to L2 norm C and adds N(0, (z C)^2) to it before it
leaves the client, so neither the server nor anyone downstream sees more than the noised update. Any two updates
are neighbours (sensitivity 2C), so one round is a Gaussian release of noise multiplier z / 2 with no
amplification by sampling; the reported epsilon is that of a client that took part in every round so far."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .. import checks
from ..randomness import draws, noise_like
from ..transforms import RoundInfo, Transform, clip_to_norm
from ..types import Params, Task
from . import accountant
from .accountant import AccountantKind, Release
from .support import check_accounting, unsupported

if TYPE_CHECKING:
    from ..strategies.base import Strategy


@dataclass(frozen=True)
class LocalDP(Transform):
    name: ClassVar[str] = "local_dp"
    private: ClassVar[bool] = True
    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    accountant: AccountantKind = "rdp"
    max_epsilon: float | None = None
    secure_noise: bool = True
    """The noise from the client's own secret stream (fedloop/randomness.py); False: from the task seed, which
    the server sends, so the server can remove it (research runs only)."""

    def __post_init__(self) -> None:
        check_accounting(self)
        checks.one_of(self, "accountant", ("rdp", "pld"))

    def check(self, strategy: Strategy) -> str | None:
        return unsupported(strategy, self)

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {"history": accountant.history_to_tensor([])}

    def client(self, task: Task, update: dict[str, torch.Tensor], seed: int
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        clipped, _, _ = clip_to_norm(update, self.clip)
        noise = noise_like(draws(self.secure_noise, seed), clipped, self.noise_multiplier * self.clip)
        return {k: v + noise[k] for k, v in clipped.items()}, {}

    def release(self) -> Release:
        return Release(self.noise_multiplier, "none")

    def server_aggregate(self, params: dict[str, torch.Tensor], state: dict[str, torch.Tensor], seed: int,
                         info: RoundInfo
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
        history = accountant.append(accountant.history_from_tensor(state.get("history")), self.release())
        eps = accountant.epsilon(history, self.delta, self.accountant)
        accountant.within_budget(eps, self.max_epsilon, self.delta, info.round, "a client's ")
        per_round = accountant.epsilon([(self.release(), 1)], self.delta, self.accountant)
        return params, {"history": accountant.history_to_tensor(history)}, \
            {"epsilon": eps, "epsilon_round": per_round}

    def exhausted(self, state: Mapping[str, torch.Tensor]) -> str | None:
        history = accountant.history_from_tensor(state.get("history"))
        if self.max_epsilon is None:
            return None
        eps = accountant.epsilon(accountant.append(history, self.release()), self.delta, self.accountant)
        return None if eps <= self.max_epsilon else f"another round would bring a client's epsilon to {eps:.4g}"

    def summary(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        history = accountant.history_from_tensor(state.get("history"))
        return {"mode": "local", "epsilon": accountant.finite(accountant.epsilon(history, self.delta,
                                                                                 self.accountant)),
                "epsilon_round": accountant.epsilon([(self.release(), 1)], self.delta, self.accountant),
                "delta": self.delta, "accountant": self.accountant, "noise_multiplier": self.noise_multiplier,
                "clip_norm": self.clip, "rounds": sum(c for _, c in history), "secure_noise": self.secure_noise}
