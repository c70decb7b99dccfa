"""The processes executor: a pool of forked single-threaded workers, each training a share of the round.

Workers are forked from the fleet's process, so client data (views into shared arrays) are inherited without a
copy per client. Each worker gets one contiguous share of the jobs, balanced by examples, and trains it with its
own inner executor (sequential, or vectorized for many small clients). Each broadcast travels once per share and
training results come back as NumPy arrays through the pool's pipe; the client apps finish in the fleet's process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

from ..client import ClientApp
from ..types import Failure, Task
from .executors import Executor, Job, Result, Sequential, Vectorized
from .packing import Arrays, Packed, dispatch, run_packed, unpack_result

log = logging.getLogger(__name__)

_resolve: Callable[[int], ClientApp] | None = None
_inner: dict[str, Executor] = {}


def _start_worker(resolve: Callable[[int], ClientApp]) -> None:
    global _resolve, _inner
    torch.set_num_threads(1)
    _resolve, _inner = resolve, {"sequential": Sequential(), "vectorized": Vectorized()}


def _run_share(inner: str, broadcast: Packed, tasks: list[Task], states: list[Arrays]) -> list[Result]:
    assert _resolve is not None
    return run_packed(_inner[inner].run, _resolve, broadcast, tasks, states)


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


class Processes:
    """Jobs spread over `workers` forked single-threaded processes (one per core by default). A share that misses
    the deadline, or whose worker dies, becomes Failures, and the pool is replaced before the next round."""

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

    def run(self, jobs: Sequence[Job], until: float | None = None) -> list[Result]:
        if not jobs:
            return []
        pool = self._ensure_pool()
        submitted = dispatch(jobs, self.workers, pack=lambda broadcast: broadcast,
                             submit=lambda _, b, light, states: pool.submit(_run_share, self.inner, b, light, states))
        results: list[Result | None] = [None] * len(jobs)
        replace_pool = False
        for members, fut in submitted:
            why = None
            try:
                share = fut.result(None if until is None else max(0.0, until - time.monotonic()))
            except BrokenProcessPool as exc:
                why = f"worker process died: {exc}"
            except TimeoutError:
                why = "no reply before the deadline (the worker was stopped)"
            if why is not None:
                replace_pool = True
                for i in members:
                    results[i] = Failure(jobs[i].task.client_id, jobs[i].task.round, why)
                continue
            for i, result in zip(members, share, strict=True):
                results[i] = unpack_result(result)
        if replace_pool:
            log.warning("processes executor: a worker died or missed the deadline; starting a new pool")
            self.close(kill=True)
        return [r for r in results if r is not None]

    def close(self, kill: bool = False) -> None:
        if self._pool is not None:
            if kill:  # workers still busy with a late share would hold the next round up
                for proc in list(getattr(self._pool, "_processes", {}).values()):
                    proc.kill()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
