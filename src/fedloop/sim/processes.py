"""The processes executor: a pool of forked single-threaded workers, each training a share of the round.

Workers are forked from the fleet's process, so client data (views into shared arrays) are inherited without a
copy per client. Each worker gets one share of the jobs, balanced by examples (packing.plan_shares), and trains
it with its own inner executor (sequential, or vectorized for many small clients). Each broadcast travels once per
share and training results come back as NumPy arrays through the pool's pipe; the client apps finish in the fleet's
process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

import cloudpickle
import torch

from ..app import file_modules
from ..client import ClientApp, Trained
from ..device import CPU, deterministic_algorithms, on_cpu
from ..memory import return_freed_memory
from ..params import num_bytes
from ..types import Task
from .executors import Executor, Job, Result, Sequential, Vectorized
from .packing import Arrays, Packed, dispatch, run_packed, unpack_result
from .shares import Share, after_loss, fail

log = logging.getLogger(__name__)

_resolve: Callable[[int], ClientApp] | None = None
_inner: dict[str, Executor] = {}


def _start_worker(resolve: Callable[[int], ClientApp]) -> None:
    global _resolve, _inner
    torch.set_num_threads(1)
    _resolve, _inner = resolve, {"sequential": Sequential(), "vectorized": Vectorized()}


def _start_device_worker(resolve: bytes, devices: Sequence[torch.device], started: Any) -> None:
    """A spawned worker on an accelerator: the n-th started takes devices[n % len(devices)], and its clients train
    there (CUDA cannot run in a forked child of a process that asked about CUDA devices)."""
    with started.get_lock():
        mine = devices[started.value % len(devices)]
        started.value += 1
    if not on_cpu(mine):
        deterministic_algorithms()
    apps = cloudpickle.loads(resolve)
    _start_worker(lambda client_id: on_device(apps(client_id), mine))


def on_device(app: ClientApp, device: torch.device) -> ClientApp:
    """The client app training on `device` (a worker's own accelerator)."""
    return app if app.device == device else replace(app, device=device)


def _run_share(inner: str, broadcast: Packed, tasks: list[Task], states: list[Arrays]) -> list[Result]:
    assert _resolve is not None
    return run_packed(_inner[inner].run, _resolve, broadcast, tasks, states)


TRIM_AFTER = 32 << 20
"""Results of at least this many bytes in a round are worth handing back to the system before the next round; below
it, re-filling the freed pages costs more than keeping them (W2 of benchmarks/engine.py, 8 MB a round: 10% slower
with a trim every round)."""


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


class Processes:
    """Jobs spread over `workers` forked single-threaded processes (one per core by default). A share whose worker
    dies is run again on a new pool (sim/shares.py), so a killed worker changes no result; a share that misses the
    deadline becomes Failures, and the pool is replaced before the next round."""

    name = "processes"

    def __init__(self, resolve: Callable[[int], ClientApp], workers: int | None = None,
                 inner: str = "sequential", devices: Sequence[torch.device] = (CPU,), start: str | None = None):
        self.resolve = resolve
        self.devices = tuple(devices)
        accelerated = not all(on_cpu(d) for d in self.devices)
        self.start = start or ("spawn" if accelerated else "fork")
        """How workers start: forked on the CPU (client data inherited, not copied), spawned on accelerators."""
        self.workers = workers or (len(self.devices) if accelerated else default_workers())
        """On accelerators, one worker per device by default (each trains its share as one batch there with
        processes-vectorized); more workers share the devices in turn."""
        self.inner = inner
        self._pool: ProcessPoolExecutor | None = None
        self._incidents: list[str] = []
        self._held = 0
        """Bytes of the training results the last round brought back."""

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            if self.start == "fork":
                self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork"),
                                                 initializer=_start_worker, initargs=(self.resolve,))
            else:
                spawn = mp.get_context("spawn")
                for module in file_modules():  # a spawned worker cannot import the user's file by name
                    cloudpickle.register_pickle_by_value(module)
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=spawn, initializer=_start_device_worker,
                    initargs=(cloudpickle.dumps(self.resolve), self.devices, spawn.Value("i", 0)))
        return self._pool

    def run(self, jobs: Sequence[Job], until: float | None = None) -> list[Result]:
        if not jobs:
            return []
        if self._held >= TRIM_AFTER:  # the last round's updates and the buffers they came through (memory.py)
            return_freed_memory()
        queue = deque(Share(members, *packed) for members, packed in dispatch(
            jobs, self.workers, pack=lambda b: b, submit=lambda _, b, light, states: (b, light, states)))
        results: list[Result | None] = [None] * len(jobs)
        while queue:
            # a dead worker breaks the whole pool, so shares lost before run alone: a loss then names its share
            batch = [s for s in queue if s.losses == 0] or [queue[0]]
            for share in batch:
                queue.remove(share)
            pool = self._ensure_pool()
            submitted = [(share, pool.submit(_run_share, self.inner, share.broadcast, share.tasks, share.states))
                         for share in batch]
            replace_pool = False
            for share, fut in submitted:
                try:
                    out = fut.result(None if until is None else max(0.0, until - time.monotonic()))
                except BrokenProcessPool:
                    replace_pool = True
                    self._incidents.append(after_loss(share, "a worker process died", queue, results))
                    continue
                except TimeoutError:
                    replace_pool = True
                    fail(share, results, "no reply before the deadline (the worker was stopped)")
                    continue
                for i, result in zip(share.members, out, strict=True):
                    results[i] = unpack_result(result)
            if replace_pool:
                self.close(kill=True)
            if until is not None and time.monotonic() >= until:
                while queue:
                    fail(queue.popleft(), results, "no reply before the deadline")
        self._held = sum(num_bytes(r.update) for r in results if isinstance(r, Trained))
        return [r for r in results if r is not None]

    def incidents(self) -> list[str]:
        """Work lost with a worker process since the last call, and what became of it."""
        out, self._incidents = self._incidents, []
        return out

    def close(self, kill: bool = False) -> None:
        if self._pool is not None:
            if kill:  # workers still busy with a late share would hold the next round up
                for proc in list(getattr(self._pool, "_processes", {}).values()):
                    proc.kill()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
