"""A fleet wrapper under which a fixed set of clients attacks: their uploads are replaced as the attack says
(attacks/updates.py) before the server sees them. The colluding attacks see the honest updates of the same collect,
which in simulation is the whole round. Seeded by (seed, round, client), so a run with an attack is reproducible."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

from ..fleet import Fleet, incidents
from ..types import ClientInfo, Reply, Task, Update
from .options import UPDATE_ATTACKS, AttackOptions
from .updates import attacked

log = logging.getLogger(__name__)


class AttackFleet:
    def __init__(self, inner: Fleet, options: AttackOptions, malicious: frozenset[int]):
        self.inner, self.options, self.malicious = inner, options, malicious
        self.capabilities = inner.capabilities
        self._asked: dict[int, int] = {}
        self.log: list[tuple[int, int]] = []
        """(round, client) of every upload replaced."""

    def clients(self) -> list[ClientInfo]:
        return self.inner.clients()

    def submit(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            if t.kind == "fit":
                self._asked[t.round] = self._asked.get(t.round, 0) + 1
        self.inner.submit(tasks)

    def collect(self, until: float | None = None, min_replies: int | None = None) -> list[Reply]:
        replies = self.inner.collect(until, min_replies)
        if self.options.kind not in UPDATE_ATTACKS:
            return replies
        updates = [r for r in replies if isinstance(r, Update)]
        honest = [u.params for u in updates if u.client_id not in self.malicious]
        bad = [u for u in updates if u.client_id in self.malicious]
        out: list[Reply] = []
        for r in replies:
            if isinstance(r, Update) and r.client_id in self.malicious:
                self.log.append((r.round, r.client_id))
                r = attacked(self.options, r, honest, self._asked.get(r.round, len(updates)), len(bad))
            out.append(r)
        return out

    def cancel(self, clients: Collection[int] | None = None, missed: bool = True) -> list[Task]:
        return self.inner.cancel(clients, missed)

    def traffic(self) -> tuple[int, int]:
        return self.inner.traffic()

    def describe(self) -> str:
        return self.inner.describe()

    def incidents(self) -> list[str]:
        return incidents(self.inner)

    def close(self) -> None:
        self.inner.close()

    @property
    def chosen(self) -> str:
        return getattr(self.inner, "chosen", "")

    @property
    def states(self):  # a simulation's client states, checkpointed with the server's
        return getattr(self.inner, "states", None)
