"""The auto executor: times one SGD step of the workload each way, picks the fastest, logs the choice.

Calibration runs on a scratch copy of one client's first batch and never touches a result. It measures
client-steps per second for: sequential (all cores inside each step), processes (one single-threaded
step per worker, all workers at once) and vectorized (one batched step over many clients).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from ..client import ClientApp
from ..data.examples import Examples
from ..local import ClientContext, SGDProgram, local_sgd
from ..types import Reply, Task
from .executors import Executor, Job, Sequential, Vectorized, fit_program
from .processes import Processes, default_workers
from .vectorized import train_group

log = logging.getLogger(__name__)

PREFERENCE = ("vectorized", "sequential", "processes")
MARGIN = 1.25
"""Near-ties go to the earlier executor in PREFERENCE: only a rate MARGIN times higher wins, so repeated runs
on one machine choose alike (different executors agree only within float tolerance)."""

VECTOR_CLIENTS = 32
"""Clients in the calibration's batched step (more than most rounds' group, fewer than W3's)."""


def _seconds_per_call(fn: Callable[[], object], budget: float = 0.15, max_reps: int = 20) -> float:
    fn()  # warm-up: allocations, kernel selection, vmap tracing
    reps, start = 0, time.perf_counter()
    while reps < max_reps and (reps < 2 or time.perf_counter() - start < budget):
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps


def calibrate(app: ClientApp, task: Task, program: SGDProgram, workers: int, vectorizable: bool,
              clients: int) -> dict[str, float]:
    """Client-steps per second of each executor on this workload (one step on the client's first batch)."""
    batch = program.batch_size or len(app.train)
    data = Examples(app.train.x, app.train.y, app.train.index[:batch])
    model = app.model_fn()
    ctx = ClientContext(model, data, app.loss_fn)

    def step() -> None:
        local_sgd(ctx, task.params, epochs=1, batch_size=None, lr=program.lr, momentum=program.momentum,
                  weight_decay=program.weight_decay, seed=task.seed, penalty=program.penalty)

    rates = {"sequential": 1.0 / _seconds_per_call(step)}
    if workers > 1 and clients > 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            single = _seconds_per_call(step)
        finally:
            torch.set_num_threads(threads)
        rates["processes"] = 0.9 * min(workers, clients) / single  # 10% for the pool's traffic
    if vectorizable:
        k = max(1, min(VECTOR_CLIENTS, clients))
        one = replace(program, epochs=1, batch_size=None)
        tasks = [replace(task, client_id=i) for i in range(k)]
        rates["vectorized"] = k / _seconds_per_call(lambda: train_group(model, one, app.loss_fn, tasks, [data] * k))
    return rates


class Auto:
    """Chooses an executor per workload (model factory, loss, program) on first sight and logs why."""

    name = "auto"

    def __init__(self, resolve: Callable[[int], ClientApp], workers: int | None = None):
        self.workers = workers or default_workers()
        self.sequential = Sequential()
        self.vectorized = Vectorized()
        self.processes = Processes(resolve, self.workers)
        self.choices: dict[tuple, str] = {}

    def choose(self, app: ClientApp, task: Task, program: SGDProgram | None, clients: int) -> Executor:
        key = (app.model_fn, app.loss_fn, program)
        if key not in self.choices:
            if program is None:
                self.choices[key] = "sequential"
                log.info("auto executor: sequential (the strategy's client half is not an SGDProgram)")
            else:
                vectorizable = self.vectorized.reason(app, program) is None
                try:
                    rates = calibrate(app, task, program, self.workers, vectorizable, clients)
                except Exception as exc:  # noqa: BLE001 - client code failed; its task will report it
                    log.info("auto executor: sequential (calibration failed: %s: %s)", type(exc).__name__, exc)
                    self.choices[key] = "sequential"
                    return self.sequential
                top = max(rates.values())
                best = next(k for k in PREFERENCE if k in rates and rates[k] * MARGIN >= top)
                self.choices[key] = best
                figures = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(rates.items(), key=lambda kv: -kv[1]))
                log.info("auto executor: %s (client-steps per second: %s)", best, figures)
        return {"sequential": self.sequential, "vectorized": self.vectorized,
                "processes": self.processes}[self.choices[key]]

    def describe(self) -> str:
        return "auto: " + (", ".join(sorted(set(self.choices.values()))) or "no fit tasks yet")

    def run(self, jobs: Sequence[Job]) -> list[Reply]:
        if not jobs:
            return []
        fits = [(app, task, fit_program(app, task)) for app, task in jobs if task.kind == "fit"]
        app, task, program = fits[0] if fits else (jobs[0][0], jobs[0][1], None)
        if not fits:  # evaluation: no calibration, sequential reference path
            return self.sequential.run(jobs)
        return self.choose(app, task, program, len(fits)).run(jobs)

    def close(self) -> None:
        self.processes.close()
