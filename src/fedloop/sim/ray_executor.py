"""The Ray executor: a local fleet's clients trained by Ray actors, for simulations larger than one machine.

The population is put in Ray's object store once; one actor per CPU (one thread each) resolves client apps from
it and trains the shares of the round it is sent with an inner executor (auto, sequential or vectorized). With
clients on CUDA, one actor per GPU of the cluster by default, each holding its share of a GPU (Ray's num_gpus: a
whole one, or a fraction when there are more actors than GPUs). A round
is cut into as many shares as the executor was started with workers, whatever is alive, so its grouping, and with
it every bit of the result, does not depend on the cluster's state. Each broadcast is put in the object store once
per round; training results come back as NumPy arrays, and the client apps finish in the fleet's process, where
the state store lives.

An actor gets one share at a time, so a lost share is known exactly. A share lost with its actor (its process or
node died) is run again on a surviving actor (sim/shares.py), and the actor is replaced; a replacement that no node
has room for waits, and joins the pool when a node does, so the pool shrinks to what the cluster holds and grows
back. When no actor is left and none starts within START_TIMEOUT, the run stops (WorkersLost). A share that misses
the round deadline becomes Failures and its actor is replaced. Every wait has a deadline, and a round that waits
long says what it waits for. Actors are started (torch imported, population loaded) before a round's clock runs.

Point it at an existing cluster with address="host:port" (a node of it), "ray://head:10001" (Ray Client) or
"auto" (the cluster `ray start` recorded on this machine); the default starts a private local Ray.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from ..app import file_modules
from ..client import ClientApp
from ..device import CPU, deterministic_algorithms
from ..errors import ConfigError, WorkersLost
from ..types import Task
from .choice import make_executor, resolve_executor
from .executors import Job, Result
from .packing import Arrays, Packed, dispatch, run_packed, unpack_result
from .population import Population
from .processes import on_device
from .ray_cluster import auth_hint, connect
from .shares import Share, after_loss, fail

log = logging.getLogger(__name__)

INNER = ("auto", "sequential", "vectorized")
START_TIMEOUT = 120.0  # seconds an actor may take to start before the executor stops waiting for it
TICK = 10.0  # seconds between the lines a waiting round logs


class _Worker:
    """A Ray actor: trains shares of rounds for any client of the population, with one thread."""

    def __init__(self, population: Population, inner: str, accelerated: bool):
        import torch

        torch.set_num_threads(1)
        self.population = population
        self.executor = make_executor(inner, population, workers=1)
        self.device = torch.device("cuda", 0) if accelerated else None
        """The actor's share of a GPU: Ray shows it the GPU it assigned as CUDA device 0."""
        if accelerated:
            deterministic_algorithms()

    def app(self, client_id: int) -> ClientApp:
        app = self.population.app(client_id)
        return app if self.device is None else on_device(app, self.device)

    def run(self, broadcast: Packed, tasks: list[Task], states: list[Arrays]) -> list[Result]:
        return run_packed(self.executor.run, self.app, broadcast, tasks, states)

    def ready(self) -> bool:
        return True


class RayExecutor:
    """Jobs spread over `workers` Ray actors (default: one per CPU of the cluster)."""

    name = "ray"

    def __init__(self, population: Population, inner: str = "auto", address: str | None = None,
                 workers: int | None = None, num_cpus: int | None = None, start_timeout: float = START_TIMEOUT,
                 devices: Sequence[torch.device] = (CPU,)):
        if inner not in INNER:
            raise ConfigError(f"sim.executor = {inner!r} cannot run inside Ray actors; use {', '.join(INNER)}")
        self._ray = ray = connect(address, num_cpus)
        self.start_timeout = start_timeout
        self.accelerated = any(d.type == "cuda" for d in devices)
        gpus = ray.cluster_resources().get("GPU", 0) if self.accelerated else 0
        if self.accelerated and gpus <= 0:
            raise ConfigError("device = 'cuda': the Ray cluster has no GPU (ray.cluster_resources() lists none); "
                              "start its nodes with GPUs or set device = 'cpu'")
        self.workers = workers or max(1, int(gpus or ray.cluster_resources().get("CPU", 1)))
        self.inner, label = resolve_executor(inner, population, workers=1)  # what each one-thread actor runs
        self.label = label if inner == "auto" else inner
        self.gpus_per_actor = min(1.0, gpus / self.workers) if self.accelerated else 0.0
        """Each actor's share of the cluster's GPUs: one GPU each, or several actors per GPU."""
        self._actor = ray.remote(num_cpus=1, num_gpus=self.gpus_per_actor)(_Worker)
        for module in file_modules():  # actors cannot import the user's file by name: send its code with the apps
            ray.cloudpickle.register_pickle_by_value(module)
        self._population = ray.put(population)
        self.actors: list[Any] = []
        self.starting: dict[Any, Any] = {}  # ready() reference -> actor not yet known to run
        self._incidents: list[str] = []
        for _ in range(self.workers):
            self._start_actor()
        why = self._await_started(time.monotonic() + start_timeout, every=True)
        if why:
            self.close()
            raise ConfigError(f"sim.engine = 'ray': {why}{auth_hint(address)}")

    def _start_actor(self) -> None:
        actor = self._actor.remote(self._population, self.inner, self.accelerated)
        self.starting[actor.ready.remote()] = actor

    def _await_started(self, until: float, every: bool = False) -> str | None:
        """Move started actors into the pool, waiting until `until` for all of them (`every`) or for one (the pool
        empty); None, or why the pool is still short. An actor that dies while starting is dropped, its reason
        logged (Ray's own words: resources, authentication, an import error of the user's app)."""
        ray = self._ray
        why = None
        while self.starting:
            wanted = len(self.starting) if every else 1
            done, _ = ray.wait(list(self.starting), num_returns=min(wanted, len(self.starting)),
                               timeout=max(0.0, until - time.monotonic()))
            for ref in done:
                actor = self.starting.pop(ref)
                try:
                    ray.get(ref)
                    self.actors.append(actor)
                except ray.exceptions.RayError as exc:
                    why = f"a Ray actor could not start: {exc}"
                    log.warning("ray executor: %s", why)
            if time.monotonic() >= until or (not every and self.actors):
                break
        if every and self.starting:
            return f"{len(self.starting)} of {self.workers} Ray actors did not start within {self.start_timeout:.0f} s"
        return None if self.actors else why or "no Ray actor could start"

    def _lose(self, actor: Any) -> None:
        """Drop a dead (or late) actor from the pool and start its replacement."""
        if actor in self.actors:
            self.actors.remove(actor)
            self._ray.kill(actor)
            self._start_actor()

    def run(self, jobs: Sequence[Job], until: float | None = None) -> list[Result]:
        if not jobs:
            return []
        ray = self._ray
        self._await_started(time.monotonic())  # replacements that could start since the last round join now
        queue = deque(Share(members, *packed) for members, packed in dispatch(
            jobs, self.workers, pack=ray.put,  # each broadcast once into the object store
            submit=lambda n, b, light, states: (b, light, states)))
        results: list[Result | None] = [None] * len(jobs)
        running: dict[Any, tuple[Share, Any]] = {}  # result reference -> (share, actor)
        while queue or running:
            busy = {id(actor) for _, actor in running.values()}
            for actor in [a for a in self.actors if id(a) not in busy]:
                if not queue:
                    break
                share = queue.popleft()
                running[actor.run.remote(share.broadcast, share.tasks, share.states)] = (share, actor)
            if not running:  # work left and no actor: wait for one to start
                why = self._await_started(min(until or float("inf"), time.monotonic() + self.start_timeout))
                if not self.actors and (until is None or time.monotonic() < until):
                    raise WorkersLost(f"no Ray actor is left to train on ({why}); {len(queue)} shares of round "
                                      f"{queue[0].tasks[0].round} are undone")
                if not self.actors:
                    self._fail(queue, results, "no reply before the deadline (no Ray actor was free)")
                    queue.clear()
                continue
            wait = TICK if until is None else max(0.0, min(TICK, until - time.monotonic()))
            done, _ = ray.wait(list(running), num_returns=1, timeout=wait)
            if not done:
                if until is not None and time.monotonic() >= until:
                    for _, actor in running.values():
                        self._lose(actor)
                    self._fail([s for s, _ in running.values()] + list(queue), results,
                               "no reply before the deadline (the actor was replaced)")
                    running.clear()
                    queue.clear()
                    continue
                log.info("ray executor: waiting for %d shares (%d clients) on %d actors, %d starting, %d queued",
                         len(running), sum(len(s.members) for s, _ in running.values()), len(self.actors),
                         len(self.starting), len(queue))
                self._await_started(time.monotonic())
                continue
            share, actor = running.pop(done[0])
            try:
                out = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.ObjectLostError) as exc:
                self._lose(actor)
                self._incidents.append(after_loss(share, f"a Ray actor was lost ({type(exc).__name__})", queue,
                                                  results))
                continue
            for i, result in zip(share.members, out, strict=True):
                results[i] = unpack_result(result)
        return [r for r in results if r is not None]

    @staticmethod
    def _fail(shares: Sequence[Share], results: list[Result | None], why: str) -> None:
        for share in shares:
            log.warning("ray executor: %s; %d clients failed", why, len(share.members))
            fail(share, results, why)

    def incidents(self) -> list[str]:
        """Work lost with an actor since the last call, and what became of it."""
        out, self._incidents = self._incidents, []
        return out

    def describe(self) -> str:
        gpus = f", {self.gpus_per_actor:g} GPU each" if self.accelerated else ""
        return f"ray ({self.workers} actors{gpus}, executor {self.label})"

    def close(self) -> None:
        for actor in [*self.actors, *self.starting.values()]:
            self._ray.kill(actor)
        self.actors = []
        self.starting = {}
