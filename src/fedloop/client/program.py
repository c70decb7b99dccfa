"""A client's local SGD declared as data (SGDProgram), and the one functional SGD step that runs it, shared by the
per-client path (training.py), DP-SGD (dpsgd.py) and the batched path (sim/vectorized.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..types import Params

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""loss(outputs, targets) -> mean loss over the batch."""

Penalty = Callable[[Params, Params, Params], torch.Tensor]
"""penalty(trainable params, global params, aux) -> a scalar added to every step's loss (FedProx, SCAFFOLD);
`aux` holds the client's own tensors (SGDProgram.aux)."""


@dataclass(frozen=True)
class SGDProgram:
    """A client half that is local SGD on the mean minibatch loss, declared as data, so that any executor can
    run it: one client at a time, or many clients as one batched computation.

    returns="delta": `epochs` epochs of SGD (torch.optim.SGD semantics) from the global params on batches of
    `batch_size` (None: the whole local set) drawn from the task seed; the update is W_global - W_local.
    returns="gradient": the full-batch gradient (1/N) sum grad L at the global params (epochs and lr unused).
    `aux` are per-client tensors passed to the penalty; they are not part of the program's identity, so clients
    that differ only in them still train as one batch.
    """

    epochs: int = 1
    batch_size: int | None = 10
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    penalty: Penalty | None = None
    returns: Literal["delta", "gradient"] = "delta"
    aux: Params = field(default_factory=dict, compare=False)
    max_steps: int | None = field(default=None, compare=False)
    """Stop after this many steps (a straggler's partial work, heterogeneity.stragglers); not part of the
    program's identity either, so stragglers still train in one batch with the others."""
    clip: float | None = None
    """DP-SGD: each example's gradient is clipped to this L2 norm, and batches are drawn independently per step
    (client/dpsgd.py); None: plain SGD."""
    noise_multiplier: float = 0.0
    """DP-SGD: the noise added to a step's sum of clipped gradients has standard deviation noise_multiplier * clip."""
    secure_noise: bool = True
    """DP-SGD: batches and noise from this process's secret stream (fedloop/randomness.py); False: from the task
    seed (reproducible, and so not private against whoever knows the seed)."""


@torch.no_grad()
def sgd_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None],
             buffers: list[torch.Tensor | None], program: SGDProgram) -> None:
    """One step of torch.optim.SGD (dampening 0, no Nesterov), in place, on plain or client-stacked tensors.

    A None gradient skips its tensor, as torch.optim.SGD does. A momentum buffer starts as the first gradient;
    a zero buffer gives the same bits (0 * m + g = g), which is how the batched path starts its stacked buffers.
    """
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if g is None:
            continue
        if program.weight_decay:
            g = g.add(p, alpha=program.weight_decay)
        if program.momentum:
            buf = buffers[i]
            if buf is None:
                buffers[i] = buf = g.clone()
            else:
                buf.mul_(program.momentum).add_(g)
            g = buf
        p.add_(g, alpha=-program.lr)
