"""The processes executor: a pool of forked single-threaded workers, each running a share of the round.

Workers are forked from the fleet's process, so client data (views into shared arrays) are inherited
without a copy per client. Each worker gets one contiguous share of the jobs, balanced by examples, and runs
it with its own inner executor (sequential, or vectorized for many small clients). The global params
travel once per share and replies come back as NumPy arrays through the pool's pipe: no shared-memory
segment or file descriptor is created per tensor.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

from ..client import ClientApp
from ..types import Failure, Reply, Task
from .executors import Executor, Job, Sequential, Vectorized
from .packing import Arrays, dispatch, run_packed, to_numpy, to_torch, unpack_reply

log = logging.getLogger(__name__)

_resolve: Callable[[int], ClientApp] | None = None
_inner: dict[str, Executor] = {}


def _start_worker(resolve: Callable[[int], ClientApp]) -> None:
    global _resolve, _inner
    torch.set_num_threads(1)
    _resolve, _inner = resolve, {"sequential": Sequential(), "vectorized": Vectorized()}


def _run_share(inner: str, params: Arrays, tasks: list[Task], states: list[Arrays]) -> list[tuple[Reply, Arrays]]:
    assert _resolve is not None
    return run_packed(_inner[inner].run, _resolve, params, tasks, states)


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


class Processes:
    """Jobs spread over `workers` forked single-threaded processes (one per core by default)."""

    name = "processes"

    def __init__(self, resolve: Callable[[int], ClientApp], workers: int | None = None,
                 inner: str = "sequential"):
        self.resolve = resolve
        self.workers = workers or default_workers()
        self.inner = inner
        self._pool: ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork"),
                                             initializer=_start_worker, initargs=(self.resolve,))
        return self._pool

    def run(self, jobs: Sequence[Job]) -> list[Reply]:
        if not jobs:
            return []
        pool = self._ensure_pool()
        tasks = [t for _, t in jobs]
        submitted = dispatch(tasks, [len(app.train) for app, _ in jobs], self.workers,
                             states=lambda i: to_numpy(jobs[i][0].state), pack_params=lambda params: params,
                             submit=lambda _, params, light, states: pool.submit(_run_share, self.inner, params,
                                                                                  light, states))
        replies: list[Reply | None] = [None] * len(jobs)
        broken = False
        for members, fut in submitted:
            try:
                results = fut.result()
            except BrokenProcessPool as exc:
                broken = True
                for i in members:
                    replies[i] = Failure(tasks[i].client_id, tasks[i].round, f"worker process died: {exc}")
                continue
            for i, (reply, state) in zip(members, results, strict=True):
                jobs[i][0].state = to_torch(state)
                replies[i] = unpack_reply(reply)
        if broken:
            log.warning("processes executor: a worker died; starting a new pool for the next round")
            self.close()
        return [r for r in replies if r is not None]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
