"""Sample-level DP-SGD inside local training (Abadi et al. 2016): each step draws a batch of B of the client's n
examples uniformly without replacement (independently of other steps), computes every example's gradient with
torch.func (vmap of grad), clips each to L2 norm C over all tensors together, sums them, adds Gaussian noise of
standard deviation z * C and divides by B. The same functions serve one client (training.py) and a stack of clients
(sim/vectorized.py): leading dimensions are [rows] or [clients, rows].

Batches and noise come from the client's own secret stream (fedloop/randomness.py), so no one who knows the task
seed, the server included, can redraw them. In the research setting (secure_noise = False) batches come from the
task seed as in plain local SGD and the noise from a second generator derived from it, so a client draws the same
batches and the same noise whichever executor runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ..data.examples import Examples
from ..params import load_into
from ..randomness import Draws, draws, noise_like
from ..sampling import sub_seed
from ..types import Params, Task
from .evaluate import Tally
from .program import LossFn, SGDProgram, sgd_step


def noise_seed(task_seed: int) -> int:
    """The seed of a client's DP-SGD noise: a function of its task seed, apart from its batch draws."""
    return sub_seed(task_seed, 0xD95)


def batch_size(program_batch: int | None, n: int, full: bool) -> int:
    """Rows per DP-SGD step: the program's batch size (at most n), or all n for full-batch programs."""
    return n if full or program_batch is None else min(program_batch, n)


def num_steps(n: int, rows: int, epochs: int, full: bool) -> int:
    """Steps per round: `epochs` expected passes over the n examples in batches of `rows` (1 for a gradient)."""
    return 1 if full else epochs * math.ceil(n / rows)


def sources(program, task_seed: int) -> tuple[Draws, Draws]:  # noqa: ANN001 - an SGDProgram
    """(where a client's DP-SGD batches come from, where its noise comes from): its secret stream for both, or in
    the research setting two generators seeded from the task seed."""
    return draws(program.secure_noise, task_seed), draws(program.secure_noise, noise_seed(task_seed))


def batches(source: Draws, n: int, rows: int, steps: int, full: bool) -> list[torch.Tensor]:
    """Each step's rows (positions among the client's n examples): `rows` of them uniformly without replacement,
    drawn independently per step; every row, once, for a full-batch program."""
    if full:
        return [torch.arange(n)]
    return [source.sample(n, rows) for _ in range(steps)]


def per_example_grads(model: nn.Module, loss_fn: LossFn) -> Callable:
    """(params, x [rows, ...], y [rows, ...]) -> (grads {name: [rows, ...]}, (losses [rows], outputs [rows, ...]))."""
    def row(p: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = functional_call(model, dict(p), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0)), out.squeeze(0).detach()

    return vmap(grad_and_value(row, has_aux=True), in_dims=(None, 0, 0))


def clip_and_sum(grads: Mapping[str, torch.Tensor], clip: float, lead: int, mask: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
    """Each row's gradient (the first `lead` dims index rows; the last of them is summed) scaled to L2 norm at most
    `clip` over all tensors together, masked, and summed over rows."""
    sq = sum(g.flatten(lead).pow(2).sum(-1) for g in grads.values())
    assert isinstance(sq, torch.Tensor)
    norms = sq.sqrt()
    factor = torch.where(norms > clip, clip / norms.clamp(min=1e-30), torch.ones_like(norms))
    if mask is not None:
        factor = factor * mask
    out = {}
    for k, g in grads.items():
        f = factor.view(*factor.shape, *([1] * (g.dim() - lead)))
        out[k] = (g * f).sum(dim=lead - 1)
    return out


def add_noise(summed: Mapping[str, torch.Tensor], std: float, source: Draws) -> dict[str, torch.Tensor]:
    """summed + N(0, std^2) per entry (one draw for all tensors, split in name order)."""
    noise = noise_like(source, summed, std)
    return {k: v + noise[k] for k, v in summed.items()}


def train_dp(program: SGDProgram, task: Task, model: nn.Module, train: Examples, loss_fn: LossFn
             ) -> tuple[Params, int, dict]:
    """One client's DP-SGD program: its update (W_global - W_local, or the noised full-batch gradient), its steps
    and training metrics."""
    assert program.clip is not None
    if any(True for _ in model.buffers()):
        raise ValueError("DP-SGD needs per-example gradients, which a model with buffers (batch statistics) "
                         "cannot give; use a model without batch normalisation")
    full = program.returns == "gradient"
    load_into(model, task.params)
    model.train()
    names = [k for k, _ in model.named_parameters()]
    params = {k: task.params[k].detach().clone() for k in names}
    n = len(train)
    rows = batch_size(program.batch_size, n, full)
    steps = num_steps(n, rows, program.epochs, full)
    draw_batches, noise = sources(program, task.seed)
    grads_of = per_example_grads(model, loss_fn)
    buffers: list[torch.Tensor | None] = [None] * len(names)
    tally = Tally()
    for pick in batches(draw_batches, n, rows, steps, full):
        idx = train.index[pick].to(train.x.device)
        xb, yb = train.x[idx], train.y[idx]
        grads, (losses, outputs) = grads_of(params, xb, yb)
        summed = clip_and_sum(grads, program.clip, 1)
        g = {k: v / rows for k, v in add_noise(summed, program.noise_multiplier * program.clip, noise).items()}
        if (penalty := program.penalty) is not None:
            g = plus_penalty(g, params, lambda live: penalty(live, task.params, program.aux))
        tally.add(losses.mean(), outputs, yb)
        if full:
            return {k: g[k] if k in g else torch.zeros_like(v) for k, v in task.params.items()}, 1, \
                tally.metrics("train_")
        sgd_step([params[k] for k in names], [g[k] for k in names], buffers, program)
    update = {k: task.params[k] - params[k] if k in params else torch.zeros_like(task.params[k])
              for k in task.params}
    return update, steps, tally.metrics("train_")


def plus_penalty(g: dict[str, torch.Tensor], params: Mapping[str, torch.Tensor],
                 penalty: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The noised data gradient plus the gradient of the program's penalty at `params` (it reads no data, so it
    needs neither clipping nor noise); `penalty` maps live params to a scalar."""
    live = {k: v.detach().requires_grad_() for k, v in params.items()}
    pg = torch.autograd.grad(penalty(live), list(live.values()), allow_unused=True)
    return {k: g[k] + (p if p is not None else 0.0) for k, p in zip(live, pg, strict=True)}
