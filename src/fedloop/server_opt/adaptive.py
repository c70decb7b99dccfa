"""Adaptive server optimizers of Reddi et al. 2021, "Adaptive Federated Optimization" (Algorithm 2): FedAdagrad,
FedYogi and FedAdam differ only in how the second moment v follows the aggregate g (fedloop's g = W_global -
W_local is the paper's -Delta, so the sign of the step flips and nothing else does):

    m <- beta1 m + (1 - beta1) g
    v <- v + g^2                                   (Adagrad)
    v <- v - (1 - beta2) g^2 sign(v - g^2)         (Yogi)
    v <- beta2 v + (1 - beta2) g^2                 (Adam)
    W <- W - lr m / (sqrt(v) + tau)

As in the paper there is no bias correction, m starts at 0 and v at tau^2 (the paper asks v_-1 >= tau^2); tau
bounds the step of a coordinate whose v is tiny.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import checks
from ..types import Params
from .base import OptState, Tensors


@dataclass(frozen=True)
class Adagrad:
    """FedAdagrad's server step (see the module docstring)."""

    name: ClassVar[str] = "adagrad"
    lr: float = 0.1
    beta1: float = 0.9
    tau: float = 1e-3

    def __post_init__(self) -> None:
        checks.positive(self, "lr", "tau")
        checks.in_range(self, "beta1", 0.0, 1.0)

    def second_moment(self, v: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        return v + g2

    def init(self, params: Params) -> Tensors:
        state = {f"m/{k}": p.new_zeros(p.shape) for k, p in params.items()}
        state.update({f"v/{k}": p.new_full(p.shape, self.tau ** 2) for k, p in params.items()})
        return state

    def step(self, params: Params, grad: Params, state: OptState) -> tuple[Tensors, Tensors]:
        new_params, new_state = {}, {}
        for k, p in params.items():
            g = grad[k]
            m = self.beta1 * state[f"m/{k}"] + (1 - self.beta1) * g
            v = self.second_moment(state[f"v/{k}"], g * g)
            new_state[f"m/{k}"], new_state[f"v/{k}"] = m, v
            new_params[k] = p - self.lr * m / (v.sqrt() + self.tau)
        return new_params, new_state


@dataclass(frozen=True)
class _Decaying(Adagrad):
    """The second moment decays with beta2 (Yogi, Adam)."""

    lr: float = 0.01
    beta2: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.in_range(self, "beta2", 0.0, 1.0)


@dataclass(frozen=True)
class Yogi(_Decaying):
    """FedYogi's server step: v moves towards g^2 by at most (1 - beta2) g^2 per round."""

    name: ClassVar[str] = "yogi"

    def second_moment(self, v: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.beta2) * g2 * torch.sign(v - g2)


@dataclass(frozen=True)
class Adam(_Decaying):
    """FedAdam's server step: v is an exponential moving average of g^2."""

    name: ClassVar[str] = "adam"

    def second_moment(self, v: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1 - self.beta2) * g2
