"""How a share of a round travels to a worker process or a Ray actor and back: tensors as NumPy arrays, each
broadcast once per share (not per task), the clients' states as inputs, and only training results coming back
(the client app's finish runs in the fleet's own process, where the state store lives)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np
import torch

from ..client import ClientApp, Trained
from ..types import Broadcast, Task
from .executors import Job, Result

Arrays = dict[str, np.ndarray]
Packed = tuple[Arrays, Arrays]
"""A broadcast's params and extras as arrays."""
P = TypeVar("P")
H = TypeVar("H")


def to_numpy(tensors: Mapping[str, torch.Tensor]) -> Arrays:
    """The tensors as arrays (a worker's results on an accelerator come back to the CPU)."""
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


def to_torch(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tensors over the arrays; read-only arrays (Ray's zero-copy objects) are copied first."""
    return {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in arrays.items()}


def plan_shares(jobs: Sequence[Job], workers: int) -> list[list[int]]:
    """`workers` shares of the jobs with about equal weight (examples: a proxy for work), each split further so that
    all jobs of a share carry the same broadcast. Largest first, each job goes to the lightest share so far (LPT
    scheduling: within 4/3 of the best split, and on Dirichlet clients a few percent from even where contiguous
    shares were 5-15% apart); a share keeps its jobs in job order."""
    w = [max(len(j.app.train), 1) for j in jobs]
    shares: list[list[int]] = [[] for _ in range(max(1, min(workers, len(jobs))))]
    loads = [0] * len(shares)
    for i in sorted(range(len(jobs)), key=lambda i: -w[i]):  # stable: equal weights keep job order
        lightest = loads.index(min(loads))
        shares[lightest].append(i)
        loads[lightest] += w[i]
    out = []
    for share in shares:
        by_broadcast: dict[tuple[int, str], list[int]] = {}
        for i in sorted(share):
            by_broadcast.setdefault(jobs[i].task.broadcast.key, []).append(i)
        out += list(by_broadcast.values())
    return out


def light(task: Task) -> Task:
    """The task without its broadcast's tensors (they travel once per share)."""
    return replace(task, broadcast=replace(task.broadcast, params={}, extras={}))


def dispatch(jobs: Sequence[Job], workers: int, pack: Callable[[Packed], P],
             submit: Callable[[int, P, list[Task], list[Arrays]], H]) -> list[tuple[list[int], H]]:
    """Send each share: `submit(share number, packed broadcast, light tasks, client states)`. A broadcast is packed
    (`pack` of its arrays) once per key, not per share. Returns each share's job positions with its handle."""
    packed: dict[tuple[int, str], P] = {}
    sent = []
    for n, members in enumerate(plan_shares(jobs, workers)):
        b = jobs[members[0]].task.broadcast
        if b.key not in packed:
            packed[b.key] = pack((to_numpy(b.params), to_numpy(b.extras)))
        sent.append((members, submit(n, packed[b.key], [light(jobs[i].task) for i in members],
                                     [to_numpy(jobs[i].state) for i in members])))
    return sent


def pack_result(result: Result) -> Result:
    if isinstance(result, Trained):
        return replace(result, update=to_numpy(result.update))  # type: ignore[arg-type]
    return result


def unpack_result(result: Result) -> Result:
    if isinstance(result, Trained):
        return replace(result, update=to_torch(result.update))  # type: ignore[arg-type]
    return result


def run_packed(run: Callable[[list[Job]], list[Result]], resolve: Callable[[int], ClientApp], broadcast: Packed,
               tasks: Sequence[Task], states: Sequence[Arrays]) -> list[Result]:
    """Worker side: rebuild the jobs around one copy of the broadcast, train them, pack the results."""
    params, extras = to_torch(broadcast[0]), to_torch(broadcast[1])
    shared: dict[tuple[int, str], Broadcast] = {}
    jobs = []
    for task, state in zip(tasks, states, strict=True):
        b = task.broadcast
        if b.key not in shared:
            shared[b.key] = replace(b, params=params, extras=extras)
        jobs.append(Job(resolve(task.client_id), replace(task, broadcast=shared[b.key]), to_torch(state)))
    return [pack_result(r) for r in run(jobs)]
