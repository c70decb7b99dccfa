"""Server SGD: FedAvg's server step (lr 1 is plain model averaging), FedSGD's, and FedAvgM's (with momentum)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import checks
from ..types import Params
from .base import OptState, Tensors


@dataclass(frozen=True)
class SGD:
    """W <- W - lr g; with momentum m: v <- m v + g, W <- W - lr v (Nesterov: W <- W - lr (g + m v)).

    FedAvgM (Hsu et al. 2019) is FedAvg with server momentum (lr 1, m 0.9 in the paper)."""

    name: ClassVar[str] = "sgd"
    lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        checks.positive(self, "lr")
        checks.in_range(self, "momentum", 0.0, 1.0)
        checks.one_of(self, "nesterov", (False, True))

    def init(self, params: Params) -> Tensors:
        if self.momentum == 0.0:
            return {}
        return {f"momentum/{k}": v.new_zeros(v.shape) for k, v in params.items()}

    def step(self, params: Params, grad: Params, state: OptState) -> tuple[Tensors, Tensors]:
        if self.momentum == 0.0:
            return {k: params[k] - self.lr * grad[k] for k in params}, {}
        new_state, new_params = {}, {}
        for k in params:
            v = self.momentum * state[f"momentum/{k}"] + grad[k]
            direction = grad[k] + self.momentum * v if self.nesterov else v
            new_state[f"momentum/{k}"] = v
            new_params[k] = params[k] - self.lr * direction
        return new_params, new_state
