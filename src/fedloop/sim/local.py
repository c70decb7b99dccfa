"""LocalFleet: the simulator's fleet. Clients live in this process (or its workers, or Ray actors) and train
through an executor; their apps finish here, where the state store lives."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from ..client import ClientApp, MemoryStates, RoundStates, StateStore, Trained
from ..device import CPU
from ..errors import ConfigError
from ..fleet import ASYNC, CONCURRENT, MESSAGES, STAGES, checked_message, incidents, split_open
from ..params import num_bytes
from ..secagg.client import Sessions
from ..types import ClientInfo, Message, Reply, Task, Update
from .choice import make_executor, resolve_executor
from .executors import Executor, Job
from .population import AppList, Population


class LocalFleet:
    """A population of client apps trained by one executor.

    Apps come from the population (built on demand for lazy ones); each client's persistent state lives in the
    state store (memory, or one file per client on disk) between its tasks, kept with the round it came from, so
    memory follows the clients sampled, not the population. Tasks run when their replies are collected: all of
    them, or the first `min_replies` in submission order (the others stay open: asynchronous training).
    """

    capabilities = frozenset({STAGES, CONCURRENT, MESSAGES, ASYNC})

    def __init__(self, population: Population | Sequence[ClientApp], executor: str | Executor = "sequential",
                 states: StateStore | None = None, workers: int | None = None,
                 devices: Sequence[torch.device] = (CPU,)):
        self.population = population if not isinstance(population, Sequence) else AppList(population)
        self.states = RoundStates(states if states is not None else MemoryStates())
        if isinstance(executor, str):
            self.chosen, self._label = resolve_executor(executor, self.population, workers)
            self.executor = make_executor(self.chosen, self.population, workers, devices)
        else:
            self.chosen = self._label = executor.name
            self.executor = executor
        self.sessions: Sessions = {}
        """Secure aggregation's client secrets: this process holds every simulated client's."""
        self._open: list[Task] = []
        self._down = 0
        self._up = 0

    def clients(self) -> list[ClientInfo]:
        return self.population.clients()

    def app(self, client_id: int) -> ClientApp:
        """The client's app, keeping its state in this fleet's store."""
        app = self.population.app(client_id)
        app.states = self.states
        app.sessions = self.sessions
        return app

    def submit(self, tasks: Sequence[Task]) -> None:
        self._open += tasks

    def collect(self, until: float | None = None, min_replies: int | None = None) -> list[Reply]:
        """Runs every open task (in-process work cannot stop early; worker executors stop waiting at `until`).
        Protocol stages that involve no training are answered here, by the client apps; the rest go to the
        executor."""
        k = len(self._open) if min_replies is None else max(0, min_replies)
        tasks, self._open = self._open[:k], self._open[k:]
        jobs: list[Job] = []
        answered: dict[int, Reply] = {}
        for pos, task in enumerate(tasks):
            try:
                app = self.app(task.client_id)
            except KeyError:
                raise ConfigError(f"task for client {task.client_id}, which is not in this fleet") from None
            if task.kind == "secagg":
                answered[pos] = app.answer(task)
            else:
                if task.kind == "fit":
                    state = app.begin(task)
                else:
                    state = app.states.latest(task.client_id) if app.strategy.evaluates_state else {}
                jobs.append(Job(app, task, state))
        trained = iter(zip(jobs, self.executor.run(jobs, until) if jobs else [], strict=True))
        replies: list[Reply] = []
        for pos, task in enumerate(tasks):
            reply: Reply
            if pos in answered:
                reply = answered[pos]
            else:
                job, result = next(trained)
                reply = job.app.finish(job.task, result, job.state) if isinstance(result, Trained) else result
            replies.append(checked_message(task, reply))
        self._count(tasks, replies)
        return replies

    def cancel(self, clients: Collection[int] | None = None, missed: bool = True) -> list[Task]:
        tasks, self._open = split_open(self._open, clients)
        return tasks

    def _count(self, tasks: Sequence[Task], replies: Sequence[Reply]) -> None:
        sizes: dict[tuple[int, str], int] = {}
        for t in tasks:
            if t.broadcast.key not in sizes:
                sizes[t.broadcast.key] = num_bytes(t.params) + num_bytes(t.extras)
            self._down += sizes[t.broadcast.key] + sum(len(v) for v in t.config.values() if isinstance(v, bytes))
        self._up += sum(num_bytes(r.params) + num_bytes(r.extras) for r in replies if isinstance(r, Update))
        self._up += sum(len(r.data) for r in replies if isinstance(r, Message))

    def traffic(self) -> tuple[int, int]:
        """The raw bytes tasks and replies would move over a network (nothing crosses one here): tensors, and
        protocol messages both ways."""
        return self._down, self._up

    def incidents(self) -> list[str]:
        """Work the executor lost with a worker since the last call, and what became of it."""
        return incidents(self.executor)

    def describe(self) -> str:
        """What ran: the executor, for auto what it chose, and any clients it could not batch."""
        describe = getattr(self.executor, "describe", None)
        label = describe() if describe is not None else self._label
        fallbacks = getattr(self.executor, "fallbacks", None)
        why = fallbacks() if fallbacks is not None else []
        return f"{label} (ran sequentially because {'; '.join(why)})" if why else label

    def close(self) -> None:
        self.executor.close()
