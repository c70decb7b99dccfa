"""Shares of a round lost with their worker (a killed process, a dead Ray actor or node): the rule that turns a
lost share into work done again, so an infrastructure failure changes no result, while a client whose own code
kills its worker every time still ends as that client's Failure.

A share lost once is run again as it was (same clients, same grouping, same states and seeds: the same bits). Lost
a second time, it is split into one share per client; a client whose own share is then lost again is a Failure
(a worker that dies whenever it runs that client)."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..types import Failure, Task
from .executors import Result
from .packing import Arrays

log = logging.getLogger(__name__)


@dataclass
class Share:
    """Jobs (by position in the round) that travel to one worker together, with everything they need."""

    members: list[int]
    broadcast: Any
    tasks: list[Task]
    states: list[Arrays]
    losses: int = 0

    def singles(self) -> list[Share]:
        return [Share([m], self.broadcast, [t], [s], losses=1)
                for m, t, s in zip(self.members, self.tasks, self.states, strict=True)]


def fail(share: Share, results: list[Result | None], why: str) -> None:
    """Every job of `share` ends as its client's Failure, with `why` (by job position in results)."""
    for i, task in zip(share.members, share.tasks, strict=True):
        results[i] = Failure(task.client_id, task.round, why)


def after_loss(share: Share, why: str, queue: deque[Share], results: list[Result | None]) -> str:
    """Put what a lost share becomes in the queue to run again (or its failure in results, by job position); logs
    and returns the incident."""
    share.losses += 1
    first = share.tasks[0]
    clients = ", ".join(str(t.client_id) for t in share.tasks[:10]) + (", ..." if len(share.tasks) > 10 else "")
    where = f"round {first.round} ({first.kind}): {why}"
    if share.losses < 2:
        queue.append(share)
        incident = f"{where}; its share (clients {clients}) was run again"
    elif len(share.members) > 1:
        queue.extend(share.singles())
        incident = f"{where}; its share (clients {clients}) was lost twice and is run client by client"
    else:
        results[share.members[0]] = Failure(first.client_id, first.round,
                                            f"{why}, each of the {share.losses} times it ran this client")
        incident = f"{where}; client {clients} failed: its worker died each time"
    log.warning("%s", incident)
    return incident
