"""The Ray executor: a local fleet's clients trained by Ray actors, for simulations larger than one machine.

The population is put in Ray's object store once; one actor per CPU (one thread each) resolves client apps from
it and trains the share of the round it is sent with an inner executor (auto, sequential or vectorized). Each
broadcast is put in the object store once per round; training results come back as NumPy arrays, and the client
apps finish in the fleet's process, where the state store lives. A share whose actor dies, or that misses the
round deadline, becomes Failures, and its actor is replaced. Actors are started (torch imported, population loaded)
before a round's clock runs, so a round deadline measures training, not a cold start.

Point it at an existing cluster with address="ray://head:10001" (or "auto" on a cluster node); the default
starts a local Ray on demand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from ..app import file_modules
from ..errors import ConfigError
from ..types import Failure, Task
from .executors import Job, Result
from .packing import Arrays, Packed, dispatch, run_packed, unpack_result
from .population import Population

log = logging.getLogger(__name__)

INNER = ("auto", "sequential", "vectorized")
START_TIMEOUT = 120.0  # seconds an actor may take to start before the executor stops waiting for it


class _Worker:
    """A Ray actor: trains shares of rounds for any client of the population, with one thread."""

    def __init__(self, population: Population, inner: str):
        import torch

        from .engines import make_executor

        torch.set_num_threads(1)
        self.population = population
        self.executor = make_executor(inner, population, workers=1)

    def run(self, broadcast: Packed, tasks: list[Task], states: list[Arrays]) -> list[Result]:
        return run_packed(self.executor.run, self.population.app, broadcast, tasks, states)

    def ready(self) -> bool:
        return True


class RayExecutor:
    """Jobs spread over `workers` Ray actors (default: one per CPU of the cluster)."""

    name = "ray"

    def __init__(self, population: Population, inner: str = "auto", address: str | None = None,
                 workers: int | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise ConfigError("sim.engine = 'ray' needs Ray: pip install 'fedloop[ray]'") from None
        if inner not in INNER:
            raise ConfigError(f"sim.executor = {inner!r} cannot run inside Ray actors; use {', '.join(INNER)}")
        self._ray = ray
        self.inner = inner
        if not ray.is_initialized():
            try:
                ray.init(address=address, num_cpus=num_cpus if address is None else None,
                         include_dashboard=False, log_to_driver=False, configure_logging=False)
            except ConnectionError as exc:
                raise ConfigError(f"sim.ray_address = {address!r}: cannot connect to Ray ({exc})") from None
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._actor = ray.remote(num_cpus=1)(_Worker)
        for module in file_modules():  # actors cannot import the user's file by name: send its code with the apps
            ray.cloudpickle.register_pickle_by_value(module)
        self._population = ray.put(population)
        self.actors = [self._new_actor() for _ in range(count)]
        why = self._started(self.actors)
        if why:
            self.close()
            raise ConfigError(f"sim.engine = 'ray': {why}")

    def _new_actor(self) -> Any:
        return self._actor.remote(self._population, self.inner)

    def _started(self, actors: list[Any]) -> str | None:
        """Wait (at most START_TIMEOUT) until `actors` can train; None, or why one cannot."""
        ray = self._ray
        done, pending = ray.wait([a.ready.remote() for a in actors], num_returns=len(actors), timeout=START_TIMEOUT)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                return f"a Ray actor could not start: {exc}"
        if pending:
            return f"{len(pending)} of {len(actors)} Ray actors did not start within {START_TIMEOUT:.0f} s"
        return None

    def run(self, jobs: Sequence[Job], until: float | None = None) -> list[Result]:
        if not jobs:
            return []
        ray = self._ray
        sent = dispatch(jobs, len(self.actors), pack=ray.put,  # each broadcast once into the object store
                        submit=lambda n, b, light, states: (n % len(self.actors),
                                                            self.actors[n % len(self.actors)].run.remote(b, light,
                                                                                                         states)))
        refs = [ref for _, (_, ref) in sent]
        timeout = None if until is None else max(0.0, until - time.monotonic())
        _, late = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        late_refs = set(late)
        results: list[Result | None] = [None] * len(jobs)
        replaced: set[int] = set()
        for members, (actor, ref) in sent:
            why = None
            if ref in late_refs:
                why = "no reply before the deadline (the actor was replaced)"
            else:
                try:
                    share = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    why = f"Ray actor died: {type(exc).__name__}"
            if why is not None:
                log.warning("ray executor: %s; %d clients failed", why, len(members))
                if actor not in replaced:
                    replaced.add(actor)
                    self._ray.kill(self.actors[actor])
                    self.actors[actor] = self._new_actor()
                for i in members:
                    results[i] = Failure(jobs[i].task.client_id, jobs[i].task.round, why)
                continue
            for i, result in zip(members, share, strict=True):
                results[i] = unpack_result(result)
        if replaced:  # started now, after the round's results are in, rather than on the next round's clock
            why = self._started([self.actors[a] for a in sorted(replaced)])
            if why:
                log.warning("ray executor: %s", why)
        return [r for r in results if r is not None]

    def describe(self) -> str:
        return f"ray ({len(self.actors)} actors, executor {self.inner})"

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
