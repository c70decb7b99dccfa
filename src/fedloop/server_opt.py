"""Server optimizers: functional (init, step) pairs that move the global params by an aggregate.

`step(params, grad, state) -> (new_params, new_state)` implements W <- W - lr * grad (plus momentum);
nothing is modified in place, so earlier states stay valid for checkpoints and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .types import Params

OptState = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ServerOptimizer:
    init: Callable[[Params], dict[str, torch.Tensor]]
    step: Callable[[Params, Params, OptState], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]


def sgd(lr: float, momentum: float = 0.0, nesterov: bool = False) -> ServerOptimizer:
    """W <- W - lr * g; with momentum m: v <- m*v + g, W <- W - lr * v (or Nesterov g + m*v)."""

    def init(params: Params) -> dict[str, torch.Tensor]:
        if momentum == 0.0:
            return {}
        return {f"momentum/{k}": torch.zeros_like(v) for k, v in params.items()}

    def step(params: Params, grad: Params, state: OptState):
        if momentum == 0.0:
            return {k: params[k] - lr * grad[k] for k in params}, {}
        new_state, new_params = {}, {}
        for k in params:
            v = momentum * state[f"momentum/{k}"] + grad[k]
            direction = grad[k] + momentum * v if nesterov else v
            new_state[f"momentum/{k}"] = v
            new_params[k] = params[k] - lr * direction
        return new_params, new_state

    return ServerOptimizer(init, step)
