"""Test fleets: MockFleet answers tasks with a function in-process, ChaosFleet wraps any fleet and injects seeded
dropouts, stragglers and corrupt updates, DropAt loses chosen clients' replies at chosen stages (a client leaving
mid-protocol), so the loop's retry, min_updates and deadline logic and secure aggregation's dropout handling can be
tested (and robustness measured) without processes or networks."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import torch

from .. import checks
from ..fleet import ASYNC, CONCURRENT, STAGES, Fleet, split_open
from ..params import num_bytes
from ..types import ClientInfo, Failure, Reply, Task, Update

log = logging.getLogger(__name__)


class MockFleet:
    """Clients whose replies are `handler(task)`, computed when collected; an exception becomes a Failure."""

    def __init__(self, handler: Callable[[Task], Reply], clients: Sequence[ClientInfo] | int,
                 capabilities: frozenset[str] = frozenset({STAGES, CONCURRENT, ASYNC})):
        self.handler = handler
        self._clients = [ClientInfo(c, 10) for c in range(clients)] if isinstance(clients, int) else list(clients)
        self.capabilities = capabilities
        self.submitted: list[Task] = []
        self._open: list[Task] = []
        self._down = self._up = 0

    def clients(self) -> list[ClientInfo]:
        return list(self._clients)

    def submit(self, tasks: Sequence[Task]) -> None:
        self.submitted += tasks
        self._open += tasks

    def collect(self, until: float | None = None, min_replies: int | None = None) -> list[Reply]:
        k = len(self._open) if min_replies is None else max(0, min_replies)
        tasks, self._open = self._open[:k], self._open[k:]
        replies = []
        for t in tasks:
            try:
                reply = self.handler(t)
            except Exception as exc:  # noqa: BLE001 - a client error becomes a Failure, as in every fleet
                reply = Failure(t.client_id, t.round, f"{type(exc).__name__}: {exc}")
            self._down += num_bytes(t.params) + num_bytes(t.extras)
            if isinstance(reply, Update):
                self._up += num_bytes(reply.params) + num_bytes(reply.extras)
            replies.append(reply)
        return replies

    def cancel(self, clients: Collection[int] | None = None, missed: bool = True) -> list[Task]:
        tasks, self._open = split_open(self._open, clients)
        return tasks

    def traffic(self) -> tuple[int, int]:
        return self._down, self._up

    def describe(self) -> str:
        return "mock"

    def close(self) -> None:
        pass


class ChaosFleet:
    """`inner` with faults drawn per (seed, round, client, stage, attempt): a task is dropped with probability
    `drop` (its reply is lost: a Failure), delayed with probability `delay` (a straggler: its reply comes only with
    a collect that has no deadline, or after one: a round with a deadline goes on without it), or its update is
    corrupted with probability `corrupt` (NaN values: a benign fault the loop must survive). A retried round draws
    again, so a fault is not bound to repeat."""

    def __init__(self, inner: Fleet, *, drop: float = 0.0, delay: float = 0.0, corrupt: float = 0.0,
                 seed: int = 0):
        self.inner = inner
        self.drop, self.delay, self.corrupt, self.seed = drop, delay, corrupt, seed
        for name in ("drop", "delay", "corrupt"):
            checks.in_range(self, name, 0.0, 1.0, high_open=False)
        self.capabilities = inner.capabilities
        self._attempts: dict[tuple[int, int, str], int] = {}
        self._fault: dict[tuple[int, int], str | None] = {}
        self._held: list[Reply] = []
        self.log: list[tuple[int, int, str]] = []
        """(round, client, fault) of every fault injected."""

    def _draw(self, task: Task) -> str | None:
        key = (task.round, task.client_id, task.broadcast.stage)
        attempt = self._attempts[key] = self._attempts.get(key, -1) + 1
        stage = int.from_bytes(task.broadcast.stage.encode()[:8], "little")
        u = np.random.default_rng([self.seed, task.round, task.client_id, stage, attempt]).random()
        for fault, p in (("drop", self.drop), ("delay", self.delay), ("corrupt", self.corrupt)):
            if u < p:
                return fault
            u -= p
        return None

    def clients(self) -> list[ClientInfo]:
        return self.inner.clients()

    def submit(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            fault = self._draw(t)
            self._fault[(t.round, t.client_id)] = fault
            if fault is not None:
                self.log.append((t.round, t.client_id, fault))
        self.inner.submit(tasks)

    def collect(self, until: float | None = None, min_replies: int | None = None) -> list[Reply]:
        out = []
        if until is None:
            out, self._held = self._held, []
        for r in self.inner.collect(until, min_replies):
            fault = self._fault.pop((r.round, r.client_id), None)
            if fault == "drop":
                log.info("chaos: dropped the reply of client %d in round %d", r.client_id, r.round)
                out.append(Failure(r.client_id, r.round, "reply lost (chaos: drop)"))
            elif fault == "delay" and until is not None:
                self._held.append(r)
            elif fault == "corrupt" and isinstance(r, Update):
                out.append(Update(r.client_id, r.round, {k: torch.full_like(v, math.nan) for k, v in r.params.items()},
                                  r.num_examples, r.metrics, r.extras, r.version))
            else:
                out.append(r)
        return out

    def cancel(self, clients: Collection[int] | None = None, missed: bool = True) -> list[Task]:
        self._held = [] if clients is None else [r for r in self._held if r.client_id not in set(clients)]
        return self.inner.cancel(clients, missed)

    def traffic(self) -> tuple[int, int]:
        return self.inner.traffic()

    def describe(self) -> str:
        return f"chaos({self.inner.describe()})"

    def close(self) -> None:
        self.inner.close()


class DropAt:
    """`inner` where the listed clients' replies at the listed stages are lost (a Failure each, as from a client
    that stopped answering): {stage: client ids}, the stage as the task's broadcast names it ("fit",
    "secagg-share", ...). With `once`, only the first exchange of each (round, stage) loses them (a retried round
    runs clean). Keeps the server's transcript: every task it sent (`tasks`) and reply it got (`replies`)."""

    def __init__(self, inner: Fleet, drops: Mapping[str, Sequence[int]], once: bool = False):
        self.inner, self.drops, self.once = inner, drops, once
        self.capabilities = inner.capabilities
        self._seen: set[tuple[int, str]] = set()
        self._now: set[tuple[int, int]] = set()
        self.tasks: list[Task] = []
        self.replies: list[Reply] = []

    def clients(self) -> list[ClientInfo]:
        return self.inner.clients()

    def submit(self, tasks: Sequence[Task]) -> None:
        self.tasks += tasks
        for t in tasks:
            key = (t.round, t.broadcast.stage)
            if t.client_id in self.drops.get(t.broadcast.stage, ()) and not (self.once and key in self._seen):
                self._now.add((t.round, t.client_id))
        self._seen |= {(t.round, t.broadcast.stage) for t in tasks}
        self.inner.submit(tasks)

    def collect(self, until: float | None = None, min_replies: int | None = None) -> list[Reply]:
        out: list[Reply] = []
        for r in self.inner.collect(until, min_replies):
            if (r.round, r.client_id) in self._now:
                self._now.discard((r.round, r.client_id))
                r = Failure(r.client_id, r.round, "dropped out")
            out.append(r)
        self.replies += out
        return out

    def cancel(self, clients: Collection[int] | None = None, missed: bool = True) -> list[Task]:
        return self.inner.cancel(clients, missed)

    def traffic(self) -> tuple[int, int]:
        return self.inner.traffic()

    def describe(self) -> str:
        return f"drop-at({self.inner.describe()})"

    def close(self) -> None:
        self.inner.close()
