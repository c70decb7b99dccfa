"""How a share of a round travels to a worker process or a Ray actor and back: tensors as NumPy arrays,
the global params once per share, replies and client states packed the same way."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np
import torch

from ..client import ClientApp
from ..types import Reply, Task, Update

Arrays = dict[str, np.ndarray]
P = TypeVar("P")
H = TypeVar("H")


def to_numpy(tensors: Mapping[str, torch.Tensor]) -> Arrays:
    return {k: v.detach().numpy() for k, v in tensors.items()}


def to_torch(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tensors over the arrays; read-only arrays (Ray's zero-copy objects) are copied first."""
    return {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in arrays.items()}


def plan_shares(tasks: Sequence[Task], weights: Sequence[int], workers: int) -> list[list[int]]:
    """Contiguous shares of the tasks with about equal weight (examples: a proxy for work), each split
    further so that all tasks of a share carry the same params object (normally one per round)."""
    w = np.maximum(np.asarray(weights, dtype=np.float64), 1.0)
    cum = np.concatenate([[0.0], np.cumsum(w)])
    targets = w.sum() * np.arange(1, workers) / workers
    bounds = np.abs(cum[:, None] - targets[None, :]).argmin(axis=0)  # the split nearest each target
    out = []
    for part in np.split(np.arange(len(tasks)), bounds):
        by_params: dict[int, list[int]] = {}
        for i in part.tolist():
            by_params.setdefault(id(tasks[i].params), []).append(i)
        out += list(by_params.values())
    return out


def pack_tasks(tasks: Sequence[Task]) -> list[Task]:
    """Tasks without their params (these travel once per share) and with NumPy extras."""
    return [replace(t, params={}, extras=to_numpy(t.extras)) for t in tasks]


def dispatch(tasks: Sequence[Task], weights: Sequence[int], workers: int, states: Callable[[int], Arrays],
             pack_params: Callable[[Arrays], P], submit: Callable[[int, P, list[Task], list[Arrays]], H]
             ) -> list[tuple[list[int], H]]:
    """Send each share of a round: `submit(share number, packed params, packed tasks, client states)`.

    The global params are packed (`pack_params` of their NumPy form) once per params object, not per share.
    Returns each share's task positions with what `submit` returned for it.
    """
    packed: dict[int, P] = {}
    sent = []
    for n, members in enumerate(plan_shares(tasks, weights, workers)):
        first = tasks[members[0]].params
        if id(first) not in packed:
            packed[id(first)] = pack_params(to_numpy(first))
        sent.append((members, submit(n, packed[id(first)], pack_tasks([tasks[i] for i in members]),
                                     [states(i) for i in members])))
    return sent


def unpack_reply(reply: Reply) -> Reply:
    if isinstance(reply, Update):
        return replace(reply, params=to_torch(reply.params), extras=to_torch(reply.extras))
    return reply


def run_packed(run: Callable[[list[tuple[ClientApp, Task]]], list[Reply]], resolve: Callable[[int], ClientApp],
               params: Arrays, tasks: Sequence[Task], states: Sequence[Arrays]) -> list[tuple[Reply, Arrays]]:
    """Worker side: rebuild the jobs around one copy of the global params, run them, pack the replies."""
    shared = to_torch(params)
    jobs = []
    for task, state in zip(tasks, states, strict=True):
        app = resolve(task.client_id)
        app.state = to_torch(state)
        jobs.append((app, replace(task, params=shared, extras=to_torch(task.extras))))
    out = []
    for (app, _), reply in zip(jobs, run(jobs), strict=True):
        if isinstance(reply, Update):
            reply = replace(reply, params=to_numpy(reply.params), extras=to_numpy(reply.extras))
        out.append((reply, to_numpy(app.state)))
    return out
