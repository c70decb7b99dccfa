"""The fleet protocol (DESIGN.md, "Fleet"): the set of clients and the way to reach them. The round loop talks to
clients only through it, so simulation and deployment differ in the fleet passed to the loop and nothing else.

A fleet takes tasks with `submit`, hands back replies with `collect`, and closes unanswered tasks with `cancel`
(their late replies are then discarded). `run` is one exchange built from the three. A fleet declares what it can
do in `capabilities`, and the loop checks a strategy's needs against them before round 1.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Protocol

from .errors import ConfigError
from .types import ClientInfo, Failure, Message, Reply, Task

STAGES = "stages"
"""Several exchanges per round (multi-stage strategies, secure aggregation)."""

CONCURRENT = "concurrent"
"""Several open tasks per client at once."""

MESSAGES = "messages"
"""Carry protocol messages (secure aggregation's stages): tasks of kind "secagg", and Message replies."""

ASYNC = "async"
"""Keep tasks open across collects: `collect(min_replies=k)` returns the first replies to arrive (in a simulation,
the first in virtual time, or in submission order without a clock) and the other tasks stay open (FedBuff)."""

CAPABILITIES = {STAGES: "run several exchanges per round", CONCURRENT: "hold several open tasks per client",
                MESSAGES: "carry secure aggregation's messages", ASYNC: "keep tasks open across collects (async)"}

MESSAGE_SIZE = "message_bytes"
"""Task config key: the most bytes the task's Message reply may hold. A fleet refuses a larger one before reading
it, and a Message to a task that does not set it."""


class Fleet(Protocol):
    capabilities: frozenset[str]

    def clients(self) -> list[ClientInfo]:
        """The clients available now, in client-id order."""
        ...

    def submit(self, tasks: Sequence[Task]) -> None:
        """Open these tasks (a fleet may start running them at once, or when replies are collected)."""
        ...

    def collect(self, until: float | None = None, min_replies: int | None = None) -> list[Reply]:
        """Replies to open tasks: wait until `min_replies` have arrived (default: every open task's) or the
        monotonic clock reaches `until`, then return (and close) the tasks answered so far."""
        ...

    def cancel(self, clients: Collection[int] | None = None, missed: bool = True) -> list[Task]:
        """Close the open tasks of `clients` (default: every open task); returns them. Later replies to them are
        discarded. `missed`: the clients count them as tasks left unanswered (a deployment stops offering a client
        that leaves too many in a row); a task closed because the round had enough replies is not missed."""
        ...

    def traffic(self) -> tuple[int, int]:
        """Bytes the fleet has moved so far: (to clients, from clients)."""
        ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def run(fleet: Fleet, tasks: Sequence[Task], deadline: float | None = None, enough: int | None = None
        ) -> list[Reply]:
    """One exchange: submit `tasks`, collect replies for up to `deadline` seconds, and close the rest, which become
    Failures. With `enough` (over-selection), the exchange ends as soon as that many replies are not failures, and
    the tasks still open are cancelled (not counted as missed). Returns one reply per task, in task order (at most
    one task per client)."""
    ids = [t.client_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ConfigError("an exchange gives each client at most one task")
    fleet.submit(tasks)
    until = None if deadline is None else time.monotonic() + deadline
    asked = {(t.client_id, t.round) for t in tasks}
    want = enough if enough is not None and enough < len(tasks) else None  # None: every task's reply
    got: dict[int, Reply] = {}

    def good() -> int:
        return sum(not isinstance(r, Failure) for r in got.values())

    while True:
        more = fleet.collect(until, None if want is None else want - good())
        got.update((r.client_id, r) for r in more if (r.client_id, r.round) in asked)  # not a late earlier reply
        if (want is None or not more or good() >= want or len(got) == len(tasks)
                or (until is not None and time.monotonic() >= until)):
            break
    cut = want is not None and good() >= want
    fleet.cancel(missed=not cut)
    why = (f"cancelled: the round had its {enough} replies" if cut else
           "no reply" if deadline is None else f"no reply before the {deadline:.0f} s deadline")
    return [got.get(t.client_id) or Failure(t.client_id, t.round, why) for t in tasks]


def split_open(tasks: Sequence[Task], clients: Collection[int] | None) -> tuple[list[Task], list[Task]]:
    """(the tasks of `clients`, the others): what an in-process fleet's cancel closes and keeps (None: all)."""
    if clients is None:
        return list(tasks), []
    ids = set(clients)
    return [t for t in tasks if t.client_id in ids], [t for t in tasks if t.client_id not in ids]


def message_refusal(task: Task, size: int) -> str | None:
    """Why a Message of `size` bytes cannot answer `task`, or None."""
    limit = task.config.get(MESSAGE_SIZE)
    if not isinstance(limit, int) or isinstance(limit, bool):
        return f"a message reply to a {task.kind!r} task, which asks for none"
    if not 0 < size <= limit:
        return f"a message of {size} bytes; the task allows 1..{limit}"
    return None


def checked_message(task: Task, reply: Reply) -> Reply:
    """`reply`, or a Failure when it is a Message the task does not allow (or the task wanted one and got another
    kind of reply)."""
    if isinstance(reply, Message):
        why = message_refusal(task, len(reply.data))
    elif MESSAGE_SIZE in task.config and not isinstance(reply, Failure):
        why = f"a {type(reply).__name__} reply to a task that asks for a message"
    else:
        return reply
    return reply if why is None else Failure(task.client_id, task.round, f"reply rejected: {why}")


def incidents(fleet: object) -> list[str]:
    """Work a fleet (or an executor) lost with a worker (a dead process, actor or node) since the last call and what
    became of it, for those that run work again rather than fail its clients (simulation); none for the others."""
    own = getattr(fleet, "incidents", None)
    return list(own()) if own is not None else []


def check_capabilities(needs: frozenset[str], fleet: Fleet, who: str) -> None:
    """ConfigError unless `fleet` can do everything `who` needs."""
    missing = sorted(needs - getattr(fleet, "capabilities", frozenset()))
    if missing:
        raise ConfigError(f"{who} needs a fleet that can {' and '.join(CAPABILITIES.get(m, m) for m in missing)}; "
                          f"{fleet.describe()} cannot")
