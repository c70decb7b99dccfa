"""Many clients' local SGD as one batched computation (torch.func: functional_call, grad, vmap).

Each client keeps its own batch order (drawn from its task seed exactly as the sequential executor draws
it) and its own number of steps. Clients are sorted by step count, so at step s the clients still training
are a prefix of the stack; a short last batch is handled by a per-row mask in the mean loss. Nothing is
truncated or padded in a way that changes a client's result.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

from ..client import dpsgd
from ..client.training import LossFn, SGDProgram, Trained, sgd_step
from ..data.examples import Examples
from ..device import free_memory
from ..types import Params, Task
from .dense import closed_form, loss_grads

log = logging.getLogger(__name__)

MAX_ROWS = 1 << 16
"""Rows one batched step may hold (clients x batch); larger groups are split into chunks of clients."""

MAX_PER_EXAMPLE = 1 << 25
"""Per-example gradient entries (rows x params) one batched DP-SGD step may hold (128 MiB of float32)."""


ROW_LOSSES: dict[LossFn, LossFn] = {
    F.cross_entropy: lambda o, t: F.cross_entropy(o, t, reduction="none"),
    F.nll_loss: lambda o, t: F.nll_loss(o, t, reduction="none"),
    F.mse_loss: lambda o, t: F.mse_loss(o, t, reduction="none"),
}
"""Unreduced forms of common mean losses: faster than applying the loss to each row under vmap."""


def per_example(loss_fn: LossFn) -> LossFn:
    """Per-row losses of a mean-reduced loss: loss_fn applied to each row on its own."""
    return vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))


def unbatchable_reason(model: nn.Module, program: SGDProgram, loss_fn: LossFn, data: Examples) -> str | None:
    """Why this model/loss cannot train clients as one batch (None when it can)."""
    buffers = [n for n, _ in model.named_buffers()]
    if buffers:
        return f"the model has buffers ({', '.join(buffers[:3])}) that batched clients cannot keep apart"
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 or \
                isinstance(m, nn.RNNBase) and m.dropout > 0:
            return f"module {name or type(m).__name__} uses dropout, whose random draws differ when batched"
    rows = data.index[:2].to(data.x.device)
    x, y = data.x[rows], data.y[rows.to(data.y.device)]
    params = {k: v.detach() for k, v in model.named_parameters()}
    try:
        with torch.no_grad():
            out = functional_call(model, params, (x,))
            whole = loss_fn(out, y)
            rowwise = per_example(loss_fn)(out, y)
            stacked = {k: torch.stack([v, v]) for k, v in params.items()}
            batched = vmap(lambda p, xb: functional_call(model, p, (xb,)))(stacked, torch.stack([x, x]))
    except Exception as exc:  # noqa: BLE001 - any failure means "not batchable", with the reason logged
        return f"the model or loss cannot run under torch.func.vmap ({type(exc).__name__}: {exc})"
    if whole.dim() != 0 or rowwise.shape != (len(rows),):
        return "the loss does not return one scalar per batch"
    if not torch.allclose(whole, rowwise.mean(), rtol=1e-5, atol=1e-7):
        return "the loss is not the mean of per-example losses, so a masked batch would change it"
    if not torch.allclose(batched[0], out, rtol=1e-5, atol=1e-6):
        return "the model's output changes under vmap"
    return None


@dataclass
class _Schedule:
    """Every client's batches for the whole program, as row indices into one shared x/y."""

    x: torch.Tensor
    y: torch.Tensor
    rows: torch.Tensor  # [clients, steps, width] row indices (padding points at a real row of the client)
    mask: torch.Tensor  # [clients, steps, width] 1.0 for a real row, 0.0 for padding
    steps: torch.Tensor  # [clients] steps each client takes


def _shared_arrays(data: Sequence[Examples]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One x/y for the whole group: the clients' own shared arrays, or a copy of just their rows."""
    if all(d.x is data[0].x and d.y is data[0].y for d in data):
        return data[0].x, data[0].y, [d.index for d in data]
    xs, ys, index, offset = [], [], [], 0
    for d in data:
        xs.append(d.x[d.index.to(d.x.device)])
        ys.append(d.y[d.index.to(d.y.device)])
        index.append(torch.arange(offset, offset + len(d)))
        offset += len(d)
    return torch.cat(xs), torch.cat(ys), index


def _pad(tensors: Sequence[torch.Tensor], sizes: Sequence[int]) -> torch.Tensor:
    """Stack 1-d tensors, zero-padded at the end to the longest."""
    if min(sizes) == max(sizes):
        return torch.stack(list(tensors))
    return pad_sequence(list(tensors), batch_first=True)


def _schedule(program: SGDProgram, tasks: Sequence[Task], data: Sequence[Examples],
              caps: Sequence[int | None] = ()) -> _Schedule:
    """Client c's step s = e * k_c + i takes rows i*width .. (i+1)*width - 1 of its epoch-e order; a client with a
    cap (a straggler's partial work, SGDProgram.max_steps) stops after that many steps."""
    x, y, index = _shared_arrays(data)
    sizes_list = [int(ix.numel()) for ix in index]
    sizes = torch.tensor(sizes_list)
    width = max(sizes_list) if program.batch_size is None or program.returns == "gradient" else program.batch_size
    epochs = 1 if program.returns == "gradient" else program.epochs
    if program.returns == "gradient":
        orders = [torch.arange(n) for n in sizes_list]
    else:
        orders = []
        gen = torch.Generator()
        for task, n in zip(tasks, sizes_list, strict=True):
            gen.manual_seed(task.seed)  # the same draws as train_program
            orders += [torch.randperm(n, generator=gen) for _ in range(epochs)]
    n_max = max(sizes_list)
    order = _pad(orders, sizes_list).view(-1)  # client c, epoch e: order[(c * epochs + e) * n_max + i]
    per_epoch = (sizes + width - 1) // width
    steps = per_epoch * epochs
    if any(c is not None for c in caps):
        steps = torch.minimum(steps, torch.tensor([int(steps[i]) if c is None else c for i, c in enumerate(caps)]))
    s = torch.arange(int(steps.max()))
    clients = torch.arange(len(tasks))[:, None, None]
    epoch = (s[None, :] // per_epoch[:, None]).clamp(max=epochs - 1)[:, :, None]  # [clients, steps, 1]
    pos = (s[None, :] % per_epoch[:, None])[:, :, None] * width + torch.arange(width)  # [clients, steps, width]
    mask = (pos < sizes[:, None, None]) & (s[None, :, None] < steps[:, None, None])
    pos = torch.where(mask, pos, 0)  # padding points at the client's first row: finite, and masked out
    local = order[(clients * epochs + epoch) * n_max + pos]
    rows = _pad(index, sizes_list).view(-1)[clients * n_max + local]
    return _Schedule(x, y, rows.to(x.device), mask.to(x.device, x.dtype if x.is_floating_point() else torch.float32),
                     steps)


def train_group(model: nn.Module, programs: Sequence[SGDProgram], loss_fn: LossFn, tasks: Sequence[Task],
                data: Sequence[Examples]) -> list[Trained]:
    """Run equal SGDPrograms (they may differ in their aux) for clients that share one broadcast; results in task
    order."""
    program = programs[0]
    full = program.batch_size is None or program.returns == "gradient"
    width = max(len(d) for d in data) if full else program.batch_size
    per_chunk = max(1, MAX_ROWS // max(width or 1, 1))
    train = _train_chunk
    if program.clip is not None:  # DP-SGD holds one gradient per row: bound rows x params instead
        numel = sum(p.numel() for p in model.parameters())
        per_chunk = max(1, min(per_chunk, MAX_PER_EXAMPLE // max(1, (width or 1) * numel)))
        train = _train_chunk_dp
    per_chunk = min(per_chunk, _fits_device(model, data[0], width or 1))
    out: list[Trained] = []
    start = 0
    while start < len(tasks):
        end = start + per_chunk
        try:
            out += train(model, programs[start:end], loss_fn, tasks[start:end], data[start:end])
        except torch.cuda.OutOfMemoryError:
            held = len(tasks[start:end])
            if held == 1:
                raise
            per_chunk = held // 2  # the estimate was short: smaller blocks, the same clients' results
            log.info("vectorized executor: the device ran out of memory; %d clients per block now", per_chunk)
            torch.cuda.empty_cache()
            continue
        start = end
    return out


DEVICE_SHARE = 0.5
"""The share of an accelerator's free memory one block of clients may plan to use."""


def _fits_device(model: nn.Module, data: Examples, width: int) -> int:
    """How many clients one block may hold on the model's accelerator, from its free memory: each client holds
    a few copies of the params (its params, their gradient, momentum, the update) and a step's rows with their
    activations (estimated at ACTIVATIONS times the input); no bound on the CPU, where MAX_ROWS bounds a block."""
    param = next(iter(model.parameters()), None)
    free = None if param is None else free_memory(param.device)
    if free is None:
        return 1 << 62
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    row = data.x[:1].numel() * data.x.element_size()
    per_client = 6 * params + width * row * ACTIVATIONS
    return max(1, int(free * DEVICE_SHARE) // max(1, per_client))


ACTIVATIONS = 32
"""The bytes a step's activations and their gradients take per byte of input row (a CNN's feature maps)."""


def _rows(data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """data's rows idx [clients, width] as [clients, width, ...]: index_select, 3-6x faster than data[idx] for a
    step's thousand rows (the same values)."""
    return data.index_select(0, idx.reshape(-1)).view(*idx.shape, *data.shape[1:])


def _row_losses(loss_fn: LossFn) -> LossFn:
    """Per-row losses over [clients, batch, ...] outputs: the unreduced form of a known loss, else vmap."""
    known = ROW_LOSSES.get(loss_fn)
    if known is not None:
        return lambda out, y: known(out.flatten(0, 1), y.flatten(0, 1)).view(*y.shape[:2], -1).mean(dim=2)
    return vmap(per_example(loss_fn))


def _stacked_aux(programs: Sequence[SGDProgram], order: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The clients' aux tensors stacked in training order (None when the program has none)."""
    if not programs[0].aux:
        return None
    return {k: torch.stack([programs[c].aux[k] for c in order.tolist()]) for k in programs[0].aux}


def _train_chunk(model: nn.Module, programs: Sequence[SGDProgram], loss_fn: LossFn, tasks: Sequence[Task],
                 data: Sequence[Examples]) -> list[Trained]:
    program = programs[0]
    global_params = tasks[0].params
    names = [n for n, _ in model.named_parameters()]
    forward = vmap(lambda p, xb: functional_call(model, p, (xb,)))
    row_losses = _row_losses(loss_fn)
    plan = _schedule(program, tasks, data, [p.max_steps for p in programs])
    scored = plan.y.dim() == 1 and not plan.y.is_floating_point()
    layers = closed_form(model, loss_fn, plan.y)
    device = plan.x.device
    order = torch.argsort(plan.steps, descending=True, stable=True)  # clients still training are a prefix
    on_device = order.to(device)
    rows, mask, steps = plan.rows[on_device], plan.mask[on_device], plan.steps[order]
    aux = _stacked_aux(programs, order)
    penalty = None if program.penalty is None else \
        vmap(program.penalty, in_dims=(0, None, None if aux is None else 0))

    def penalty_sum(sub: dict[str, torch.Tensor], active: int) -> torch.Tensor:
        """The penalties of the first `active` stacked clients, summed."""
        assert penalty is not None
        return penalty(sub, global_params, {} if aux is None else {k: v[:active] for k, v in aux.items()}).sum()

    active_at = (steps[None, :] > torch.arange(int(steps[0]))[:, None]).sum(1).tolist()
    count = len(tasks)
    params = {k: global_params[k].detach().unsqueeze(0).repeat(count, *([1] * global_params[k].dim()))
              for k in names}
    momentum = {k: torch.zeros_like(v) for k, v in params.items()} if program.momentum else None
    loss_sum = torch.zeros(count, device=device)
    correct_sum = torch.zeros(count, device=device)
    rows_per_step = mask.sum(dim=2)  # [clients, steps]
    divisors = rows_per_step.clamp(min=1.0)
    model.train()
    for s, active in enumerate(active_at):
        idx, m = rows[:active, s], mask[:active, s]
        xb = _rows(plan.x, idx)
        yb = _rows(plan.y, idx)
        n = rows_per_step[:active, s]
        if layers is None:
            sub = {k: v[:active].detach().requires_grad_() for k, v in params.items()}
            outputs = forward(sub, xb)
            losses = (row_losses(outputs, yb) * m).sum(dim=1) / divisors[:active, s]
            total = losses.sum() if penalty is None else losses.sum() + penalty_sum(sub, active)
            grads = torch.autograd.grad(total, list(sub.values()))
        else:  # closed form for the loss; a penalty's gradient still comes from autograd
            live = {k: v[:active] for k, v in params.items()}
            by_name, rowwise, outputs = loss_grads(layers, live, xb, yb, m / divisors[:active, s, None])
            losses = (rowwise * m).sum(dim=1) / divisors[:active, s]
            grads = tuple(by_name[k] for k in names)
            if penalty is not None:
                sub = {k: v.detach().requires_grad_() for k, v in live.items()}
                pulled = torch.autograd.grad(penalty_sum(sub, active), list(sub.values()), allow_unused=True)
                grads = tuple(g if p is None else g + p for g, p in zip(grads, pulled, strict=True))
        with torch.no_grad():
            loss_sum[:active] += losses * n
            scored = scored and outputs.dim() == 3
            if scored:
                correct_sum[:active] += ((outputs.argmax(dim=2) == yb) * m).sum(dim=1)
        if program.returns == "gradient":
            params = dict(zip(names, grads, strict=True))
            continue
        buffers: list[torch.Tensor | None] = [momentum[k][:active] for k in names] if momentum is not None \
            else [None] * len(names)
        sgd_step([params[k][:active] for k in names], grads, buffers, program)
    seen = mask.sum(dim=(1, 2))
    losses_out = (loss_sum / seen).tolist()
    accuracies = (correct_sum / seen).tolist()
    if program.returns == "gradient":
        updates = {k: params[k].unbind(0) for k in names}
    else:
        updates = {k: (global_params[k].unsqueeze(0) - params[k]).unbind(0) for k in names}
    steps_out = steps.tolist()
    results: list[Trained | None] = [None] * count
    for pos, c in enumerate(order.tolist()):
        metrics = {"train_loss": losses_out[pos]}
        if scored:
            metrics["train_accuracy"] = accuracies[pos]
        update: Params = {k: updates[k][pos] for k in global_params}
        results[c] = Trained(update, len(data[c]), int(steps_out[pos]), metrics)
    return [r for r in results if r is not None]


def _summed(penalty: Callable, live: dict[str, torch.Tensor], global_params: Params, aux: Params) -> torch.Tensor:
    """The stacked clients' penalties, summed: the gradient of the sum is each client's own gradient."""
    return penalty(live, global_params, aux).sum()


def _train_chunk_dp(model: nn.Module, programs: Sequence[SGDProgram], loss_fn: LossFn, tasks: Sequence[Task],
                    data: Sequence[Examples]) -> list[Trained]:
    """DP-SGD for a stack of clients: the batches, per-example clipping and noise of client/dpsgd.py, each client
    drawing from where it draws alone (its secret stream, or in the research setting its seeded generators)."""
    program = programs[0]
    assert program.clip is not None
    full = program.returns == "gradient"
    global_params = tasks[0].params
    names = [n for n, _ in model.named_parameters()]
    x, y, index = _shared_arrays(data)
    sizes = [int(ix.numel()) for ix in index]
    per_row = [dpsgd.batch_size(program.batch_size, n, full) for n in sizes]
    steps_of = [dpsgd.num_steps(n, r, program.epochs, full) for n, r in zip(sizes, per_row, strict=True)]
    width, count = max(per_row), len(tasks)
    order = sorted(range(count), key=lambda c: -steps_of[c])  # clients still training are a prefix
    most = steps_of[order[0]]
    rows = torch.zeros(count, most, width, dtype=torch.long)
    mask = torch.zeros(count, most, width)
    drawn_from = {c: dpsgd.sources(program, tasks[c].seed) for c in order}  # (batches, noise) of each client
    for pos, c in enumerate(order):
        for s, pick in enumerate(dpsgd.batches(drawn_from[c][0], sizes[c], per_row[c], steps_of[c], full)):
            rows[pos, s, :len(pick)] = index[c][pick]
            rows[pos, s, len(pick):] = index[c][0]
            mask[pos, s, :len(pick)] = 1.0
    rows, mask = rows.to(x.device), mask.to(x.device)
    noise = [drawn_from[c][1] for c in order]
    divisor = torch.tensor([float(per_row[c]) for c in order], device=x.device)
    aux = _stacked_aux(programs, torch.tensor(order))
    penalty = None if program.penalty is None else \
        vmap(program.penalty, in_dims=(0, None, None if aux is None else 0))
    grads_of = vmap(dpsgd.per_example_grads(model, loss_fn), in_dims=(0, 0, 0))
    params = {k: global_params[k].detach().unsqueeze(0).repeat(count, *([1] * global_params[k].dim()))
              for k in names}
    buffers: list[torch.Tensor | None] = [torch.zeros_like(params[k]) for k in names] if program.momentum \
        else [None] * len(names)
    loss_sum, correct_sum, seen = (torch.zeros(count, device=x.device) for _ in range(3))
    scored = y.dim() == 1 and not y.is_floating_point()
    std = program.noise_multiplier * program.clip
    model.train()
    for s in range(most):
        active = sum(1 for c in order if steps_of[c] > s)
        idx, m = rows[:active, s], mask[:active, s]
        xb = _rows(x, idx)
        yb = _rows(y, idx)
        sub = {k: v[:active] for k, v in params.items()}
        grads, (losses, outputs) = grads_of(sub, xb, yb)
        summed = dpsgd.clip_and_sum(grads, program.clip, 2, m)
        drawn = [dpsgd.add_noise({k: summed[k][pos] for k in names}, std, noise[pos]) for pos in range(active)]
        g = {k: torch.stack([d[k] for d in drawn]) / divisor[:active].view(-1, *([1] * (summed[k].dim() - 1)))
             for k in names}
        if penalty is not None:
            own = {} if aux is None else {k: v[:active] for k, v in aux.items()}
            g = dpsgd.plus_penalty(g, sub, functools.partial(_summed, penalty, global_params=global_params, aux=own))
        with torch.no_grad():
            loss_sum[:active] += (losses * m).sum(dim=1)
            seen[:active] += m.sum(dim=1)
            scored = scored and outputs.dim() == 3
            if scored:
                correct_sum[:active] += ((outputs.argmax(dim=2) == yb) * m).sum(dim=1)
        if full:
            params = g
            break
        sgd_step([params[k][:active] for k in names], [g[k] for k in names],
                 [b[:active] if b is not None else None for b in buffers], program)
    results: list[Trained | None] = [None] * count
    for pos, c in enumerate(order):
        metrics = {"train_loss": float(loss_sum[pos] / seen[pos])}
        if scored:
            metrics["train_accuracy"] = float(correct_sum[pos] / seen[pos])
        update: Params = {k: (params[k][pos] if full else global_params[k] - params[k][pos]) if k in params
                          else torch.zeros_like(global_params[k]) for k in global_params}
        results[c] = Trained(update, sizes[c], steps_of[c], metrics)
    return [r for r in results if r is not None]
