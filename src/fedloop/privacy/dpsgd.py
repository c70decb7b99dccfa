"""Sample-level DP-SGD as a transform: on the client it turns the local-training program into DP-SGD (per-example
clipping to C and noise z C on each step's sum, client/dpsgd.py); on the server it accounts each client's
examples. A step samples B of the client's n examples without replacement (replace-one adjacency: the event is
SampledWithoutReplacement(n, B, Gaussian(z / 2))), a round is `steps` such steps, and a client's epsilon composes
the rounds it took part in. The reported epsilon is the largest over the clients so far; n is the count each
client reports."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..client import dpsgd
from ..client.training import SGDProgram
from ..transforms import RoundInfo, Transform
from ..types import Params, Task
from . import accountant
from .accountant import Release
from .support import check_accounting, unsupported

if TYPE_CHECKING:
    from ..strategies.base import Strategy


def client_release(noise_multiplier: float, program: SGDProgram, n: int) -> Release:
    """One round of DP-SGD on a client with n examples, as the accountant sees it."""
    full = program.returns == "gradient"
    rows = dpsgd.batch_size(program.batch_size, n, full)
    return Release(noise_multiplier, "fixed", population=n, sample=rows,
                   steps=dpsgd.num_steps(n, rows, program.epochs, full))


@functools.lru_cache(maxsize=4096)
def client_epsilon(release: Release, rounds: int, delta: float) -> float:
    return accountant.epsilon([(release, rounds)], delta, "rdp")


@dataclass(frozen=True)
class DPSGD(Transform):
    name: ClassVar[str] = "dp_sgd"
    private: ClassVar[bool] = True
    reads_updates: ClassVar[bool] = True
    """Its accountant counts each client's rounds from the round's updates."""
    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    max_epsilon: float | None = None
    secure_noise: bool = True
    """Batches and noise from each client's own secret stream; False: from the task seed, which the server sends
    (research runs only)."""

    def __post_init__(self) -> None:
        check_accounting(self)

    def check(self, strategy: Strategy) -> str | None:
        return unsupported(strategy, self, extras_ok=True)

    def program(self, task: Task, program: SGDProgram) -> SGDProgram:
        return replace(program, clip=self.clip, noise_multiplier=self.noise_multiplier,
                       secure_noise=self.secure_noise)

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {"rounds": torch.zeros(0, dtype=torch.float64), "examples": torch.zeros(0, dtype=torch.float64)}

    def _epsilons(self, rounds: torch.Tensor, examples: torch.Tensor, program: SGDProgram, extra: int = 0
                  ) -> float:
        out = 0.0
        for r, n in zip(rounds.tolist(), examples.tolist(), strict=True):
            if r > 0:
                out = max(out, client_epsilon(client_release(self.noise_multiplier, program, int(n)),
                                              int(r) + extra, self.delta))
        return out

    def server_aggregate(self, params: dict[str, torch.Tensor], state: dict[str, torch.Tensor], seed: int,
                         info: RoundInfo
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
        rounds = state.get("rounds", torch.zeros(0, dtype=torch.float64)).clone()
        examples = state.get("examples", torch.zeros(0, dtype=torch.float64)).clone()
        top = max((u.client_id for u in info.updates), default=-1) + 1
        if top > len(rounds):
            rounds = torch.cat([rounds, torch.zeros(top - len(rounds), dtype=torch.float64)])
            examples = torch.cat([examples, torch.zeros(top - len(examples), dtype=torch.float64)])
        for u in info.updates:
            rounds[u.client_id] += 1
            examples[u.client_id] = float(u.num_examples)
        eps = self._epsilons(rounds, examples, info.program)
        accountant.within_budget(eps, self.max_epsilon, self.delta, info.round, "a client's ")
        return params, {"rounds": rounds, "examples": examples, "program": _program_row(info.program)}, \
            {"epsilon": eps}

    def exhausted(self, state: Mapping[str, torch.Tensor]) -> str | None:
        if self.max_epsilon is None or "program" not in state:
            return None
        eps = self._epsilons(state["rounds"], state["examples"], _program_of(state["program"]), extra=1)
        return None if eps <= self.max_epsilon else \
            f"another round with its most exposed client would bring its epsilon to {eps:.4g}"

    def summary(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        eps = 0.0 if "program" not in state else \
            self._epsilons(state["rounds"], state["examples"], _program_of(state["program"]))
        return {"mode": "dp-sgd", "epsilon": accountant.finite(eps), "delta": self.delta, "accountant": "rdp",
                "noise_multiplier": self.noise_multiplier, "clip_norm": self.clip,
                "clients": int((state.get("rounds", torch.zeros(0)) > 0).sum()), "secure_noise": self.secure_noise}


def _program_row(program: SGDProgram) -> torch.Tensor:
    """What the accountant needs of the program (batch size, epochs, full batch), kept in the state."""
    return torch.tensor([float(program.batch_size or 0), float(program.epochs),
                         float(program.returns == "gradient")], dtype=torch.float64)


def _program_of(row: torch.Tensor) -> SGDProgram:
    b, e, full = row.tolist()
    return SGDProgram(epochs=int(e), batch_size=int(b) or None, returns="gradient" if full else "delta")
