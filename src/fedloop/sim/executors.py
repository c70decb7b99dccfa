"""In-process executors: how a local fleet runs a round's (client app, task) jobs.

Every executor returns one reply per job, in job order, and gives the same result for the same seed
(within float tolerance): they differ only in how the arithmetic is scheduled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from torch import nn

from ..client import ClientApp
from ..local import SGDProgram
from ..types import Reply, Task
from .vectorized import train_group, unbatchable_reason

log = logging.getLogger(__name__)

Job = tuple[ClientApp, Task]


class Executor(Protocol):
    name: str

    def run(self, jobs: Sequence[Job]) -> list[Reply]: ...

    def close(self) -> None: ...


class Workspaces:
    """One reusable model per model factory: clients copy the global params into it before training."""

    def __init__(self) -> None:
        self._models: dict[Callable[[], nn.Module], nn.Module] = {}

    def get(self, app: ClientApp) -> nn.Module:
        if app.model_fn not in self._models:
            self._models[app.model_fn] = app.model_fn()
        return self._models[app.model_fn]


class Sequential:
    """The reference: one client after another through ClientApp.handle."""

    name = "sequential"

    def __init__(self) -> None:
        self.workspaces = Workspaces()

    def run(self, jobs: Sequence[Job]) -> list[Reply]:
        return [app.handle(task, self.workspaces.get(app)) for app, task in jobs]

    def close(self) -> None:
        pass


def fit_program(app: ClientApp, task: Task) -> SGDProgram | None:
    """The SGDProgram a fit job runs, when its strategy declares one and the client has data."""
    if task.kind != "fit" or task.client_id != app.client_id or len(app.train) == 0:
        return None
    return app.strategy.client_program(task)


class Vectorized:
    """Clients whose strategy declares an SGDProgram train as one torch.func batch per group of equal
    (program, global params, model factory, loss); everything else runs sequentially."""

    name = "vectorized"

    def __init__(self) -> None:
        self.sequential = Sequential()
        self._reasons: dict[tuple, str | None] = {}

    def reason(self, app: ClientApp, program: SGDProgram) -> str | None:
        """Why this group cannot be batched (None when it can); logged once per model, loss and program."""
        key = (app.model_fn, app.loss_fn, program)
        if key not in self._reasons:
            why = unbatchable_reason(self.sequential.workspaces.get(app), program, app.loss_fn, app.train)
            if why is not None:
                log.info("vectorized executor: running these clients sequentially because %s", why)
            self._reasons[key] = why
        return self._reasons[key]

    def run(self, jobs: Sequence[Job]) -> list[Reply]:
        replies: list[Reply] = [None] * len(jobs)  # type: ignore[list-item] - every slot is filled below
        groups: dict[tuple, list[int]] = {}
        alone: list[int] = []
        for i, (app, task) in enumerate(jobs):
            program = fit_program(app, task)
            if program is None:
                alone.append(i)
            else:
                groups.setdefault((program, id(task.params), app.model_fn, app.loss_fn), []).append(i)
        for key in [k for k in groups if self.reason(jobs[groups[k][0]][0], k[0]) is not None]:
            alone += groups.pop(key)
        for (program, _, _, _), members in groups.items():
            app = jobs[members[0]][0]
            try:
                batch = train_group(self.sequential.workspaces.get(app), program, app.loss_fn,
                                    [jobs[i][1] for i in members], [jobs[i][0].train for i in members])
            except Exception as exc:  # noqa: BLE001 - the sequential path then reports per-client failures
                log.warning("vectorized executor: a batch of %d clients failed (%s: %s); running them "
                            "sequentially", len(members), type(exc).__name__, exc)
                alone += members
                continue
            for i, reply in zip(members, batch, strict=True):
                replies[i] = reply
        for i, reply in zip(alone, self.sequential.run([jobs[i] for i in alone]), strict=True):
            replies[i] = reply
        return replies

    def close(self) -> None:
        pass
