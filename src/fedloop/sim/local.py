"""LocalFleet: the simulator's fleet. Runs every task in this process, one client after another."""

from __future__ import annotations

from collections.abc import Sequence

from ..client import ClientApp
from ..errors import ConfigError
from ..types import ClientInfo, Reply, Task


class LocalFleet:
    """A population of in-process client apps sharing one workspace model.

    Clients are independent because each task first copies the global params into the workspace.
    """

    def __init__(self, apps: Sequence[ClientApp]):
        ids = [a.client_id for a in apps]
        if len(set(ids)) != len(ids):
            raise ConfigError("client ids in a fleet must be unique")
        self._apps = {a.client_id: a for a in apps}
        self._workspace = None

    def clients(self) -> list[ClientInfo]:
        return [a.info() for a in self._apps.values()]

    def app(self, client_id: int) -> ClientApp:
        return self._apps[client_id]

    def run(self, tasks: Sequence[Task], deadline: float | None = None) -> list[Reply]:
        """Run tasks sequentially (the reference executor). `deadline` does not apply in-process."""
        replies = []
        for task in tasks:
            app = self._apps[task.client_id]
            if self._workspace is None:
                self._workspace = app.model_fn()
            replies.append(app.handle(task, self._workspace))
        return replies
