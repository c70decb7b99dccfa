"""The simulator's virtual clock ([async]): each client gets a seeded speed and each fit task a seeded duration,
and replies come back in the order of their virtual finishing times, so asynchronous training (FedBuff) and
over-selected rounds are simulated as a federation of uneven clients would run them, and a same-seed run gives the
same bits whatever the machine does. Real time never enters: training happens when a reply is due.

A client's mean task time is `mean` * exp(sigma * z_c) (log-normal across clients: a heavy tail of slow ones), or
read from a CSV of `client,seconds` rows; a task lasts its client's mean times exp(jitter * z_t - jitter^2 / 2)
(mean-preserving noise per task). z_c comes from (seed, client), z_t from the task's seed. Tasks other than fit
tasks (evaluation, protocol messages) take no virtual time.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import checks
from ..errors import ConfigError
from ..fleet import Fleet
from ..store import csv_rows
from ..types import Reply, Task

Duration = Literal["none", "lognormal", "csv"]
_SPEED = 0xC10C


@dataclass(frozen=True)
class AsyncOptions:
    """[async]: the virtual clock of a simulation. `duration = "none"` (the default) runs without one: replies come
    in submission order and metrics.jsonl has no virtual_time."""

    duration: Duration = "none"
    mean: float = 1.0
    """The median over clients of a client's mean task time (virtual seconds)."""
    sigma: float = 1.0
    """The spread of client speeds: the log-normal sigma across clients (1.0: the slowest of 100 clients is about
    10x the median)."""
    jitter: float = 0.2
    """The log-normal sigma of one task's time around its client's mean."""
    path: str | None = None
    """duration = "csv": a file of `client,seconds` rows (a header row is allowed), every client's mean task time."""

    def __post_init__(self) -> None:
        checks.one_of(self, "duration", Duration)
        checks.positive(self, "mean")
        checks.in_range(self, "sigma", 0.0, 10.0)
        checks.in_range(self, "jitter", 0.0, 10.0)
        if (self.duration == "csv") != (self.path is not None):
            checks.fail(self, "path", 'is the CSV of duration = "csv" (and is set only for it)')

    @property
    def enabled(self) -> bool:
        return self.duration != "none"


def read_means(path: str | Path) -> dict[int, float]:
    """client -> mean task seconds from a CSV of `client,seconds` rows; a ConfigError names the file and row."""
    out: dict[int, float] = {}
    for line, row in csv_rows(path, "async.path", ()):
        if line == 1 and not row[0].strip().lstrip("-").isdigit():
            continue  # the header
        try:
            client, seconds = int(row[0]), float(row[1])
        except (ValueError, IndexError):
            raise ConfigError(f"{path}, row {line}: expected client,seconds, not {','.join(row)!r}") from None
        if client < 0 or not (math.isfinite(seconds) and seconds > 0):
            raise ConfigError(f"{path}, row {line}: client {client} with {seconds} s: expected a client id >= 0 "
                              "and a positive finite time")
        out[client] = seconds
    if not out:
        raise ConfigError(f"async.path = {str(path)!r}: no client,seconds rows")
    return out


class Durations:
    """The seeded task times of AsyncOptions."""

    def __init__(self, options: AsyncOptions, seed: int):
        self.options, self.seed = options, seed
        self.means = read_means(options.path) if options.path is not None else None
        self._speed: dict[int, float] = {}

    def mean(self, client_id: int) -> float:
        """The client's mean task time."""
        if self.means is not None:
            if client_id not in self.means:
                raise ConfigError(f"async.path = {self.options.path!r} has no row for client {client_id}")
            return self.means[client_id]
        if client_id not in self._speed:
            z = np.random.default_rng([self.seed, _SPEED, client_id]).standard_normal()
            self._speed[client_id] = self.options.mean * math.exp(self.options.sigma * z)
        return self._speed[client_id]

    def of(self, task: Task) -> float:
        """How long `task` takes, in virtual seconds."""
        if task.kind != "fit":
            return 0.0
        j = self.options.jitter
        z = np.random.default_rng([task.seed, _SPEED]).standard_normal() if j else 0.0
        return self.mean(task.client_id) * math.exp(j * z - j * j / 2)


class VirtualClock:
    """A fleet wrapper that hands replies back in virtual-time order: `collect(min_replies=k)` runs the k open tasks
    due first (ties in submission order) and moves the clock to the last of them; collecting every open task moves
    it to the slowest. Real deadlines (`until`) do not apply in virtual time."""

    def __init__(self, inner: Fleet, durations: Durations):
        self.inner, self.durations = inner, durations
        self.capabilities = inner.capabilities
        self.now = 0.0
        self._due: list[tuple[float, int, Task]] = []  # (finish time, submission number, task), a heap
        self._count = 0

    def __getattr__(self, name: str) -> Any:  # the inner fleet's states, chosen executor, incidents, ...
        return getattr(self.inner, name)

    def virtual_time(self) -> float:
        return self.now

    def restart_at(self, now: float) -> None:
        """Continue a resumed run's clock from the time its last kept round recorded (with no task in flight)."""
        self.now = now

    def clients(self) -> list:
        return self.inner.clients()

    def submit(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            heapq.heappush(self._due, (self.now + self.durations.of(t), self._count, t))
            self._count += 1

    def collect(self, until: float | None = None, min_replies: int | None = None) -> list[Reply]:
        k = len(self._due) if min_replies is None else min(max(0, min_replies), len(self._due))
        due = [heapq.heappop(self._due) for _ in range(k)]
        if not due:
            return []
        self.now = max(self.now, due[-1][0])
        self.inner.submit([t for _, _, t in due])
        return self.inner.collect()

    def cancel(self, clients: Collection[int] | None = None, missed: bool = True) -> list[Task]:
        ids = None if clients is None else set(clients)
        closed = [d for d in self._due if ids is None or d[2].client_id in ids]
        self._due = [d for d in self._due if not (ids is None or d[2].client_id in ids)]
        heapq.heapify(self._due)
        self.inner.cancel(clients, missed)
        return [t for _, _, t in sorted(closed)]

    def traffic(self) -> tuple[int, int]:
        return self.inner.traffic()

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()
