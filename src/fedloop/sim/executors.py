"""In-process executors: how a local fleet trains (and evaluates) a round's jobs.

An executor only trains: for a fit job it returns the client's Trained result (or a Failure), and the fleet passes
it to the client app's `finish`. Every executor returns one result per job, in job order, and gives the same
result for the same seed (within float tolerance): they differ only in how the arithmetic is scheduled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import torch
from torch import nn

from ..client import ClientApp, ClientState, SGDProgram, Trained
from ..device import place_examples, place_task, to_device
from ..types import Evaluation, Failure, Task
from .vectorized import train_group, unbatchable_reason

log = logging.getLogger(__name__)

Result = Trained | Evaluation | Failure


class Job(NamedTuple):
    """One task for one client app, with the state the client starts it from."""

    app: ClientApp
    task: Task
    state: ClientState


class Executor(Protocol):
    name: str

    def run(self, jobs: Sequence[Job], until: float | None = None) -> list[Result]:
        """One result per job, in job order; executors that can stop waiting do so at the monotonic `until`."""
        ...

    def close(self) -> None: ...


class Workspaces:
    """One reusable model per model factory and device: clients copy the global params into it before training."""

    def __init__(self) -> None:
        self._models: dict[tuple[Callable[[], nn.Module], torch.device], nn.Module] = {}

    def get(self, app: ClientApp) -> nn.Module:
        key = (app.model_fn, app.device)
        if key not in self._models:
            self._models[key] = app.workspace()
        return self._models[key]


class Sequential:
    """The reference: one client after another."""

    name = "sequential"

    def __init__(self) -> None:
        self.workspaces = Workspaces()

    def run_one(self, job: Job) -> Result:
        model = self.workspaces.get(job.app)
        if job.task.kind == "evaluate":
            return job.app.evaluate(job.task, model, job.state)
        return job.app.fit(job.task, job.state, model)

    def run(self, jobs: Sequence[Job], until: float | None = None) -> list[Result]:
        return [self.run_one(job) for job in jobs]

    def close(self) -> None:
        pass


def batch_program(job: Job) -> SGDProgram | None:
    """The SGDProgram a fit job declares; None for evaluation, a client without data, or an error (which the
    client's own run then reports as its Failure)."""
    app, task = job.app, job.task
    if task.kind != "fit" or task.client_id != app.client_id or len(app.train) == 0:
        return None
    try:
        return app.strategy.training_program(place_task(task, app.device), to_device(job.state, app.device))
    except Exception:  # noqa: BLE001 - the client's own run reports the error as its Failure
        return None


class Vectorized:
    """Fit jobs whose client half is an SGDProgram train as one torch.func batch per group of equal (program,
    broadcast, model factory, loss); everything else runs sequentially, with the reason logged once."""

    name = "vectorized"

    def __init__(self) -> None:
        self.sequential = Sequential()
        self._reasons: dict[tuple, str | None] = {}

    def reason(self, app: ClientApp, program: SGDProgram) -> str | None:
        """Why this group cannot be batched (None when it can); logged once per strategy, model, loss, program."""
        key = (type(app.strategy), app.model_fn, app.loss_fn, program, app.device)
        if key not in self._reasons:
            why = app.strategy.unbatchable_reason() or unbatchable_reason(
                self.sequential.workspaces.get(app), program, app.loss_fn, place_examples(app.train, app.device))
            if why is not None:
                log.info("vectorized executor: running these clients sequentially because %s", why)
            self._reasons[key] = why
        return self._reasons[key]

    def fallbacks(self) -> list[str]:
        """Why groups of clients ran sequentially instead of as one batch (empty when every group batched)."""
        return sorted({why for why in self._reasons.values() if why is not None})

    def run(self, jobs: Sequence[Job], until: float | None = None) -> list[Result]:
        results: list[Result | None] = [None] * len(jobs)
        groups: dict[tuple, list[tuple[int, SGDProgram]]] = {}
        alone: list[int] = []
        for i, job in enumerate(jobs):
            program = batch_program(job)
            if program is None:
                alone.append(i)
            else:
                key = (type(job.app.strategy), program, job.task.broadcast.key, job.app.model_fn, job.app.loss_fn,
                       job.app.device)
                groups.setdefault(key, []).append((i, program))
        for key in [k for k in groups if self.reason(jobs[groups[k][0][0]].app, k[1]) is not None]:
            alone += [i for i, _ in groups.pop(key)]
        for members in groups.values():
            app = jobs[members[0][0]].app
            try:
                batch = train_group(self.sequential.workspaces.get(app), [p for _, p in members], app.loss_fn,
                                    [place_task(jobs[i].task, app.device) for i, _ in members],
                                    [place_examples(jobs[i].app.train, app.device) for i, _ in members])
            except Exception as exc:  # noqa: BLE001 - the sequential path then reports per-client failures
                log.warning("vectorized executor: a batch of %d clients failed (%s: %s); running them "
                            "sequentially", len(members), type(exc).__name__, exc)
                alone += [i for i, _ in members]
                continue
            for (i, _), trained in zip(members, batch, strict=True):
                results[i] = trained
        for i in alone:
            results[i] = self.sequential.run_one(jobs[i])
        return [r for r in results if r is not None]

    def close(self) -> None:
        pass
