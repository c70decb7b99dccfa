"""RayFleet: the simulator's fleet spread over a Ray cluster, for simulations larger than one machine.

The population is put in Ray's object store once; one actor per CPU (one thread each) holds a LocalFleet
over it and trains the batch of clients it is sent with a local executor (vectorized, sequential or auto).
Per round the global params are put in the object store once; replies come back as NumPy arrays.
Client state stays with the driver's state store, so any actor can serve any client.

Point it at an existing cluster with `ray_address="ray://head:10001"` (or "auto" on a cluster node);
the default starts a local Ray on demand.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError
from ..types import ClientInfo, Reply, Task
from .packing import dispatch, run_packed, to_numpy, to_torch, unpack_reply
from .population import Population
from .states import MemoryStates, StateStore


class _Worker:
    """A Ray actor: a local fleet over the whole population, run with one thread."""

    def __init__(self, population: Population, executor: str):
        import torch

        from .local import LocalFleet

        torch.set_num_threads(1)
        self.fleet = LocalFleet(population, executor=executor, workers=1)

    def run(self, params: dict, tasks: list[Task], states: list[dict]) -> list[tuple[Reply, dict]]:
        return run_packed(self.fleet.executor.run, self.fleet.population.app, params, tasks, states)


class RayFleet:
    """Clients trained by Ray actors, `workers` of them (default: one per CPU of the cluster)."""

    def __init__(self, population: Population, executor: str = "auto", address: str | None = None,
                 workers: int | None = None, states: StateStore | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise ConfigError("sim.engine = 'ray' needs Ray: pip install 'fedloop[ray]'") from None
        if executor not in ("auto", "sequential", "vectorized"):
            raise ConfigError(f"sim.executor = {executor!r} cannot run inside Ray actors; "
                              "use auto, sequential or vectorized")
        self._ray = ray
        self.executor = executor
        if not ray.is_initialized():
            try:
                ray.init(address=address, num_cpus=num_cpus if address is None else None,
                         include_dashboard=False, log_to_driver=False, configure_logging=False)
            except ConnectionError as exc:
                raise ConfigError(f"sim.ray_address = {address!r}: cannot connect to Ray ({exc})") from None
        self.population = population
        self.states = states if states is not None else MemoryStates()
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor = ray.remote(num_cpus=1)(_Worker)
        self._sizes = {c.client_id: c.num_examples for c in population.clients()}
        pop_ref = ray.put(population)
        self.actors = [actor.remote(pop_ref, executor) for _ in range(count)]

    def clients(self) -> list[ClientInfo]:
        return self.population.clients()

    def run(self, tasks: Sequence[Task], deadline: float | None = None) -> list[Reply]:
        """One reply per task, in task order; each actor gets one share of the round."""
        if not tasks:
            return []
        ray = self._ray
        pending = dispatch(tasks, [self._sizes.get(t.client_id, 1) for t in tasks], len(self.actors),
                           states=lambda i: to_numpy(self.states.get(tasks[i].client_id) or {}),
                           pack_params=ray.put,  # once per round into the object store, shared by every actor
                           submit=lambda n, params, light, states:
                               self.actors[n % len(self.actors)].run.remote(params, light, states))
        replies: list[Reply | None] = [None] * len(tasks)
        for members, ref in pending:
            for i, (reply, state) in zip(members, ray.get(ref), strict=True):
                if state:
                    self.states.put(tasks[i].client_id, to_torch(state))
                replies[i] = unpack_reply(reply)
        return [r for r in replies if r is not None]

    def describe(self) -> str:
        return f"ray ({len(self.actors)} actors, executor {self.executor})"

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
