"""Choosing an executor. `auto` (the default) chooses from the workload alone — its model's size, its batch, whether
it can be batched, the clients per round and the cores — never from timing, so the same command on the same
machine runs the same arithmetic (and writes the same bits) however busy the machine is. `auto-timed` times one SGD
step of the workload each way and picks the fastest: sometimes faster, but a loaded machine may choose otherwise.

Calibration runs on a scratch copy of one client's first batch and never touches a result. It measures
client-steps per second for: sequential (all cores inside each step), processes (one single-threaded
step per worker, all workers at once) and vectorized (one batched step over many clients).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from ..client import ClientApp, ClientContext, SGDProgram, train_program
from ..data.examples import Examples
from ..device import CPU, name_of, on_cpu, place_examples, place_task, synchronize
from ..types import Task
from .dense import closed_form
from .executors import Executor, Job, Result, Sequential, Vectorized, batch_program
from .processes import Processes, default_workers
from .vectorized import train_group, unbatchable_reason

log = logging.getLogger(__name__)

PREFERENCE = ("vectorized", "sequential", "processes")
MARGIN = 1.1
"""Near-ties go to the earlier executor in PREFERENCE: only a rate MARGIN times higher wins, so repeated runs
on one machine choose alike (different executors agree only within float tolerance)."""

VECTOR_CLIENTS = 32
"""Clients in the calibration's batched step (more than most rounds' group, fewer than W3's)."""


def _seconds_per_call(fn: Callable[[], object], device: torch.device = CPU, budget: float = 0.15,
                      max_reps: int = 20) -> float:
    fn()  # warm-up: allocations, kernel selection, vmap tracing
    synchronize(device)
    reps, start = 0, time.perf_counter()
    while reps < max_reps and (reps < 2 or time.perf_counter() - start < budget):
        fn()
        synchronize(device)
        reps += 1
    return (time.perf_counter() - start) / reps


def client_steps(program: SGDProgram, sizes: Sequence[int]) -> list[int]:
    """SGD steps each client takes in this program."""
    if program.returns == "gradient":
        return [1] * len(sizes)
    return [program.epochs * math.ceil(n / (program.batch_size or n)) for n in sizes]


def calibrate(app: ClientApp, task: Task, program: SGDProgram, workers: int, vectorizable: bool,
              steps: Sequence[int]) -> dict[str, float]:
    """Predicted client-steps per second of each executor for a round whose clients take `steps` steps,
    from timing single SGD steps on the client's first batch."""
    batch = program.batch_size or len(app.train)
    data = place_examples(Examples(app.train.x, app.train.y, app.train.index[:batch]), app.device)
    model = app.workspace()
    task = place_task(task, app.device)
    ctx = ClientContext(model, data, app.loss_fn)
    one = replace(program, epochs=1, batch_size=None)
    clients = len(steps)
    rates = {"sequential": 1.0 / _seconds_per_call(lambda: train_program(one, task, ctx), app.device)}
    if workers > 1 and clients > 1 and on_cpu(app.device):  # workers share an accelerator: no faster there
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            single = _seconds_per_call(lambda: train_program(one, task, ctx))
        finally:
            torch.set_num_threads(threads)
        rates["processes"] = 0.9 * min(workers, clients) / single  # 10% for the pool's traffic
    if vectorizable:
        def batched(k: int) -> float:
            tasks = [replace(task, client_id=i) for i in range(k)]
            return _seconds_per_call(lambda: train_group(model, [one] * k, app.loss_fn, tasks, [data] * k),
                                     app.device)

        # a batched step costs t0 + a * t1 with a clients still training; they finish at different steps
        k = max(2, min(VECTOR_CLIENTS, clients))
        t_1, t_k = batched(1), batched(k)
        t1 = max(0.0, (t_k - t_1) / (k - 1))
        t0 = max(0.0, t_1 - t1)
        total = sum(steps)
        rates["vectorized"] = total / (max(steps) * t0 + total * t1)
    return rates


VECTOR_WORK = 400_000
"""Batch the clients when a client's SGD step is at most this many (params x rows) multiply-adds: the measured
crossover on this project's 2-core machine lies between 261,220 (a 26k-param MLP, batch 10: vectorized 4,772
client-steps/s against processes 3,821) and 552,100 (the default job's 55k-param MLP: processes 3,517 against
vectorized 3,243), both measured when every model went through autograd."""

DENSE_VECTOR_WORK = 1_000_000
"""The same bound for a dense model that the vectorized executor differentiates in closed form (sim/dense.py), where
batching costs far less. Seconds per round on the same machine, processes against vectorized: the default job
(552,100) 69-75 ms against 34-38 ms, a clear win; at 1,992,100 (the 2NN at batch 10) the order depends on the clients:
Fashion-MNIST's 20 default clients 3.15-3.27 s against 2.95-3.13 s, but `benchmarks/engine.py`'s W2 (100 Dirichlet
clients of very unequal sizes) 0.193 s against 0.261 s in one run and 0.201 s against 0.179 s in another. The bound
sits below that uncertain zone."""


def choose_executor(app: ClientApp, per_round: int, workers: int) -> tuple[str, str]:
    """The executor `auto` runs a workload with, and why: vectorized for clients whose steps are small enough that
    batching wins, else one process per core when there are several cores and clients, else sequential."""
    local = app.strategy.local
    program = local.program()
    model = app.model_fn()
    why = app.strategy.unbatchable_reason() or unbatchable_reason(model, program, app.loss_fn, app.train)
    params = sum(p.numel() for p in model.parameters())
    rows = program.batch_size or len(app.train)
    work = params * rows
    if not on_cpu(app.device):  # an accelerator runs one big batch best; its processes would share it
        if why is None:
            return "vectorized", f"the clients train on {name_of(app.device)}, which runs them best as one batch"
        return "sequential", f"{why}; the clients train on {name_of(app.device)}, one after another"
    dense = closed_form(model, app.loss_fn, app.train.y) is not None
    limit = DENSE_VECTOR_WORK if dense else VECTOR_WORK
    kind = "; a dense model, differentiated in closed form" if dense else ""
    if why is None and work <= limit:
        return "vectorized", f"{params:,} params x {rows} rows per step <= {limit:,}{kind}"
    reason = why or f"{params:,} params x {rows} rows per step > {limit:,}{kind}"
    if workers > 1 and per_round > 1:
        return "processes", f"{reason}; {workers} cores, {per_round} clients per round"
    return "sequential", f"{reason}; {workers} core(s), {per_round} client(s) per round"


class AutoTimed:
    """Chooses an executor per workload (model factory, loss, program) on first sight by timing it, and logs why."""

    name = "auto-timed"

    def __init__(self, resolve: Callable[[int], ClientApp], workers: int | None = None):
        self.workers = workers or default_workers()
        self.sequential = Sequential()
        self.vectorized = Vectorized()
        self.processes = Processes(resolve, self.workers)
        self.choices: dict[tuple, str] = {}

    def choose(self, job: Job, program: SGDProgram | None, sizes: Sequence[int]) -> Executor:
        app = job.app
        key = (type(app.strategy), app.model_fn, app.loss_fn, program)
        if key not in self.choices:
            if program is None or app.strategy.unbatchable_reason() is not None:
                self.choices[key] = "sequential"
                log.info("auto-timed executor: sequential (%s)", app.strategy.unbatchable_reason()
                         or "the strategy's client half is not an SGDProgram")
            else:
                vectorizable = self.vectorized.reason(app, program) is None
                try:
                    rates = calibrate(app, job.task, program, self.workers, vectorizable,
                                      client_steps(program, sizes))
                except Exception as exc:  # noqa: BLE001 - client code failed; its task will report it
                    log.info("auto-timed executor: sequential (calibration failed: %s: %s)", type(exc).__name__,
                             exc)
                    self.choices[key] = "sequential"
                    return self.sequential
                top = max(rates.values())
                best = next(k for k in PREFERENCE if k in rates and rates[k] * MARGIN >= top)
                self.choices[key] = best
                figures = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(rates.items(), key=lambda kv: -kv[1]))
                log.info("auto-timed executor: %s (client-steps per second: %s)", best, figures)
        executors: dict[str, Executor] = {"sequential": self.sequential, "vectorized": self.vectorized,
                                          "processes": self.processes}
        return executors[self.choices[key]]

    def describe(self) -> str:
        return "auto-timed: " + (", ".join(sorted(set(self.choices.values()))) or "no fit tasks yet")

    def run(self, jobs: Sequence[Job], until: float | None = None) -> list[Result]:
        if not jobs:
            return []
        fits = [(job, batch_program(job)) for job in jobs if job.task.kind == "fit"]
        if not fits:  # evaluation: no calibration, the sequential reference path
            return self.sequential.run(jobs)
        programs = [f for f in fits if f[1] is not None] or fits
        job, program = programs[0]
        return self.choose(job, program, [len(j.app.train) for j, _ in programs]).run(jobs, until)

    def close(self) -> None:
        self.processes.close()
