"""What every server optimizer is: a frozen dataclass of hyperparameters with a functional (init, step) pair.

`step(params, grad, state) -> (new_params, new_state)` moves the global params by the aggregated update `grad`
(a pseudo-gradient W_global - W_local, or a gradient); nothing is modified in place, so earlier states stay valid
for checkpoints and tests. State tensors are keyed "<slot>/<param name>".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Protocol

import torch

from ..types import Params

OptState = Mapping[str, torch.Tensor]
Tensors = dict[str, torch.Tensor]


class ServerOptimizer(Protocol):
    name: ClassVar[str]

    def init(self, params: Params) -> Tensors: ...

    def step(self, params: Params, grad: Params, state: OptState) -> tuple[Tensors, Tensors]: ...
