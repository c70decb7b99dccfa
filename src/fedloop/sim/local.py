"""LocalFleet: the simulator's fleet. Clients live in this process (or its workers) and run through an
executor: sequential, vectorized, processes, or auto."""

from __future__ import annotations

from collections.abc import Sequence

from ..client import ClientApp
from ..errors import ConfigError
from ..types import ClientInfo, Reply, Task
from .executors import Executor
from .population import AppList, Population
from .states import MemoryStates, StateStore


class LocalFleet:
    """A population of client apps run by one executor.

    Apps come from the population (built on demand for lazy ones); each client's persistent state lives in
    the state store between its tasks, so memory follows the clients sampled, not the population.
    """

    def __init__(self, population: Population | Sequence[ClientApp], executor: str | Executor = "sequential",
                 states: StateStore | None = None, workers: int | None = None):
        from .engines import make_executor  # executors may reach back into the fleet (process workers)

        self.population = population if not isinstance(population, Sequence) else AppList(population)
        self.states = states if states is not None else MemoryStates()
        self.executor = make_executor(executor, self, workers) if isinstance(executor, str) else executor

    def clients(self) -> list[ClientInfo]:
        return self.population.clients()

    def app(self, client_id: int) -> ClientApp:
        """The client's app with its persistent state loaded."""
        app = self.population.app(client_id)
        state = self.states.get(client_id)
        if state is not None:
            app.state = state
        return app

    def run(self, tasks: Sequence[Task], deadline: float | None = None) -> list[Reply]:
        """One reply per task, in task order. `deadline` does not apply in-process."""
        jobs = []
        for task in tasks:
            try:
                jobs.append((self.app(task.client_id), task))
            except KeyError:
                raise ConfigError(f"task for client {task.client_id}, which is not in this fleet") from None
        replies = self.executor.run(jobs)
        for app, _ in jobs:
            if app.state:
                self.states.put(app.client_id, app.state)
        return replies

    def describe(self) -> str:
        """The executor, and for auto what it chose."""
        describe = getattr(self.executor, "describe", None)
        return describe() if describe is not None else self.executor.name

    def close(self) -> None:
        self.executor.close()
