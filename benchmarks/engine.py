"""Simulation speed of fedloop's executors against a raw PyTorch floor, on workloads W1-W4 (issue 3).

For each workload it prints, per executor and for the floor: seconds per round (median of the timed rounds),
client updates per second, peak RSS, the peak PSS of its whole process tree, and the ratio to the floor (below 1
is faster than the floor). The floor is the faster of
  (a) a plain PyTorch loop (same model, same batches, same SGD steps, client after client, in-process
      averaging, all cores inside each step) and
  (b) the same loop split over one single-threaded forked process per core.
Every measurement runs in its own fresh (spawned) process, so peak RSS is that run's own; "workers" is the
largest peak of any child process (process pools); "tree PSS" is the peak over the run (after the data are loaded)
of the summed proportional set size of the measuring process and all its descendants (psutil, sampled every
0.2 s), which counts a page shared copy-on-write by k processes as 1/k in each: the memory the run really takes.
Each run does one warm-up round, then --rounds timed rounds with no evaluation. The last column is the largest
difference between its final params and the floor's (a sanity check that the same work was done).

    python benchmarks/engine.py                    # W1-W4, 5 timed rounds each
    python benchmarks/engine.py --workloads W3 W4 --rounds 5
    python benchmarks/engine.py --interleave W1 --rounds 6   # sequential vs floor (a), alternating rounds
    python benchmarks/engine.py --interleave W3 --interleave-executor vectorized --rounds 50   # the same, vectorized
    python benchmarks/engine.py --two-nodes W3 --rounds 5    # Ray: one node, then two (one CPU each)

--two-nodes starts a Ray cluster on this machine (ray.cluster_utils.Cluster on 127.0.0.1: a head node with one CPU),
times fedloop's Ray engine on it, adds a second one-CPU node, times it again, and prints both with their ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import threading
import time
from dataclasses import dataclass

import psutil
import torch
from torch import nn
from torch.nn import functional as F

import fedloop
from fedloop.data.gaussian import GaussianTeacher
from fedloop.experiment import build_fleet
from fedloop.loop import run_loop
from fedloop.models import model_factory
from fedloop.run import initial_params
from fedloop.sampling import round_rng, task_seed
from fedloop.sim import SimOptions
from fedloop.stops import MaxRounds
from fedloop.types import ClientInfo

EXECUTORS = ("sequential", "vectorized", "processes", "processes-vectorized", "auto")


@dataclass
class Workload:
    name: str
    data: fedloop.Dataset
    part: fedloop.Partition
    model_fn: object
    strategy: fedloop.FedAvg
    about: str


def make_workload(name: str, per_round: int | None = None, seed: int = 0) -> Workload:
    local = fedloop.LocalSGD(epochs=1, batch_size=10, lr=0.05)
    if name in ("W1", "W2"):
        data = fedloop.load_dataset("fashion-mnist", seed=seed)
        scheme, model = ("iid", "cnn") if name == "W1" else ("dirichlet", "mlp")
        part = fedloop.make_partition(data, scheme, 100, seed, alpha=0.5, local_test_fraction=0.0)
        per_round = per_round or 10
        about = f"Fashion-MNIST, {model}, 100 {scheme} clients, {per_round}/round"
    else:
        data = GaussianTeacher(60, 10, seed).dataset(1000 * 50, 1000)
        part = fedloop.make_partition(data, "iid", 1000, seed, local_test_fraction=0.0)
        model = "logreg"
        per_round = per_round or 100
        about = f"1000 clients x 50 Gaussian rows (60-dim, linear teacher), logreg, {per_round}/round"
    strategy = fedloop.FedAvg(sampler=fedloop.Sampler(per_round), local=local)
    return Workload(name, data, part, model_factory(model, data.spec()), strategy, about + ", E=1, B=10, lr 0.05")


def _plain_clients(w: Workload, glob: dict, chosen: list[ClientInfo], r: int, seed: int, total: int,
                   model: nn.Module) -> dict[str, torch.Tensor]:
    """The floor's inner loop: plain SGD per client; returns the sample-weighted sum of W_global - W_client
    (the same arithmetic as FedAvg's pseudo-gradient mean, so the final params can be compared)."""
    o = w.strategy.local
    assert isinstance(o, fedloop.LocalSGD)
    acc = {k: torch.zeros_like(v) for k, v in glob.items()}
    for c in chosen:
        rows = torch.as_tensor(w.part.train[c.client_id])
        model.load_state_dict(glob)
        opt = torch.optim.SGD(model.parameters(), lr=o.lr)
        gen = torch.Generator().manual_seed(task_seed(seed, r, c.client_id))
        for _ in range(o.epochs):
            order = rows[torch.randperm(len(rows), generator=gen)]
            for s in range(0, len(order), o.batch_size):
                b = order[s:s + o.batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(w.data.x_train[b]), w.data.y_train[b]).backward()
                opt.step()
        for k, v in model.state_dict().items():
            acc[k].add_(glob[k] - v, alpha=c.num_examples / total)
    return acc


_W: Workload | None = None


def _worker_init() -> None:
    torch.set_num_threads(1)


def _worker(args: tuple) -> dict[str, torch.Tensor]:
    glob, chosen, r, seed, total = args
    return _plain_clients(_W, glob, chosen, r, seed, total, _W.model_fn())


def floor(w: Workload, rounds: int, seed: int, cores: int) -> tuple[list[float], dict]:
    """(a) with cores=1: in-process; (b) with cores>1: one single-threaded forked process per core."""
    global _W
    _W = w
    glob = initial_params(w.model_fn, seed)
    model = w.model_fn()
    clients = [ClientInfo(c, len(w.part.train[c])) for c in range(w.part.num_clients)]
    pool = mp.get_context("fork").Pool(cores, initializer=_worker_init) if cores > 1 else None
    times = []
    for r in range(1, rounds + 2):
        start = time.perf_counter()
        chosen = w.strategy.sampler.select(clients, round_rng(seed, r))
        total = sum(c.num_examples for c in chosen)
        if pool is None:
            delta = _plain_clients(w, glob, chosen, r, seed, total, model)
        else:
            parts = pool.map(_worker, [(glob, chosen[i::cores], r, seed, total) for i in range(cores)])
            delta = {k: sum(p[k] for p in parts) for k in glob}
        glob = {k: glob[k] - delta[k] for k in glob}
        times.append(time.perf_counter() - start)
    if pool is not None:
        pool.close()
        pool.join()
    return times[1:], glob


def fedloop_run(w: Workload, rounds: int, seed: int, executor: str) -> tuple[list[float], dict]:
    fleet = build_fleet(w.data, w.part, w.strategy, w.model_fn, F.cross_entropy, SimOptions(executor=executor))
    state = w.strategy.init(initial_params(w.model_fn, seed), seed)
    result = run_loop(w.strategy, fleet, state, [MaxRounds(rounds + 1)], federated_eval=False)
    fleet.close()
    return [r.seconds for r in result.records[1:]], result.state.params


def two_nodes(name: str, rounds: int, seed: int, executor: str) -> None:
    """Seconds per round of the Ray engine on a one-node, then a two-node cluster (one CPU per node), in one run."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a cluster of this machine only,
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # on loopback (read when ray is imported)
    import ray
    from ray.cluster_utils import Cluster

    w = make_workload(name, None, seed)
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    spr, params = {}, {}
    try:
        for nodes in (1, 2):
            if nodes == 2:
                cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
                cluster.wait_for_nodes()
                while ray.cluster_resources().get("CPU", 0) < 2:
                    time.sleep(0.1)
            fleet = build_fleet(w.data, w.part, w.strategy, w.model_fn, F.cross_entropy,
                                SimOptions(executor=executor, engine="ray", ray_address=cluster.address))
            state = w.strategy.init(initial_params(w.model_fn, seed), seed)
            result = run_loop(w.strategy, fleet, state, [MaxRounds(rounds + 1)], federated_eval=False)
            print(f"  {nodes} node{'s' if nodes > 1 else ''}: {fleet.describe()}")
            fleet.close()
            spr[nodes] = statistics.median(r.seconds for r in result.records[1:])
            params[nodes] = result.state.params
    finally:
        ray.shutdown()
        cluster.shutdown()
    diff = max(float((params[1][k] - params[2][k]).abs().max()) for k in params[1])
    print(f"\n{name}: {w.about}; Ray engine, executor {executor}, median of {rounds} timed rounds\n"
          f"  one node  {spr[1]:.4f} s/round\n  two nodes {spr[2]:.4f} s/round\n"
          f"  two nodes take {spr[2] / spr[1]:.3f}x the time of one; max |dW| between them {diff:.2e}")


def interleaved(name: str, rounds: int, seed: int, executor: str) -> None:
    """fedloop's fleet and floor (a) in one process, round by round, so machine noise hits both."""
    w = make_workload(name, None, seed)
    fleet = build_fleet(w.data, w.part, w.strategy, w.model_fn, F.cross_entropy, SimOptions(executor=executor))
    state = w.strategy.init(initial_params(w.model_fn, seed), seed)
    glob, model = dict(state.params), w.model_fn()
    clients = [ClientInfo(c, len(w.part.train[c])) for c in range(w.part.num_clients)]
    ours, plain = [], []
    for r in range(1, rounds + 2):
        start = time.perf_counter()
        state = run_loop(w.strategy, fleet, state, [MaxRounds(r)], federated_eval=False).state
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        chosen = w.strategy.sampler.select(clients, round_rng(seed, r))
        delta = _plain_clients(w, glob, chosen, r, seed, sum(c.num_examples for c in chosen), model)
        glob = {k: glob[k] - delta[k] for k in glob}
        plain.append(time.perf_counter() - start)
    diff = max(float((state.params[k] - glob[k]).abs().max()) for k in glob)
    print(f"\n{name} interleaved in one process, rounds 2-{rounds + 1}: fedloop {executor} {sum(ours[1:]):.3f} s, "
          f"floor (a) {sum(plain[1:]):.3f} s, ratio {sum(ours[1:]) / sum(plain[1:]):.3f} (floor (a) "
          f"{sum(plain[1:]) / sum(ours[1:]):.1f}x the time); max |dW| {diff:.2e}")


class TreePss:
    """Peak summed PSS (MB) of this process and its descendants, sampled in a thread while the block runs."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.peak, self._stop = every, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        me = psutil.Process()
        total = 0
        for p in (me, *me.children(recursive=True)):
            try:
                total += p.memory_full_info().pss
            except psutil.Error:  # a worker that exited between the listing and the read
                pass
        self.peak = max(self.peak, total / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> TreePss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def measure(name: str, per_round: int | None, kind: str, rounds: int, seed: int, queue: mp.Queue) -> None:
    """One measurement in a fresh process: its seconds per round, final params and peak RSS."""
    w = make_workload(name, per_round, seed)
    with TreePss() as pss:
        if kind == "floor-a":
            times, params = floor(w, rounds, seed, 1)
        elif kind == "floor-b":
            times, params = floor(w, rounds, seed, len(os.sched_getaffinity(0)))
        else:
            times, params = fedloop_run(w, rounds, seed, kind)
    queue.put({"times": times, "params": {k: v.numpy().copy() for k, v in params.items()}, "pss": pss.peak,
               "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "workers_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024})


def run_one(name: str, per_round: int | None, kind: str, rounds: int, seed: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(name, per_round, kind, rounds, seed, queue))
    proc.start()
    out = queue.get()
    proc.join()
    out["params"] = {k: torch.from_numpy(v) for k, v in out["params"].items()}
    return out


def report(name: str, per_round: int | None, executors: list[str], rounds: int, seed: int) -> dict[str, float]:
    w = make_workload(name, per_round, seed)
    k = w.strategy.sampler.clients_per_round
    print(f"\n{name}: {w.about}; {rounds} timed rounds")
    print(f"  {'run':<12}{'s/round':>10}{'updates/s':>11}{'vs floor':>10}{'RSS MB':>9}{'workers MB':>12}"
          f"{'tree PSS':>10}{'max |dW|':>11}")
    runs = {kind: run_one(name, per_round, kind, rounds, seed) for kind in ("floor-a", "floor-b", *executors)}
    spr = {kind: statistics.median(r["times"]) for kind, r in runs.items()}
    best = min(("floor-a", "floor-b"), key=spr.__getitem__)
    ref = runs["floor-a"]["params"]
    for kind, r in runs.items():
        diff = max(float((r["params"][p] - ref[p]).abs().max()) for p in ref)
        workers = f"{r['workers_rss']:.0f}" if r["workers_rss"] > 0 else "-"
        tag = " *" if kind == best else ""
        print(f"  {kind + tag:<12}{spr[kind]:>10.4f}{k / spr[kind]:>11.1f}{spr[kind] / spr[best]:>10.3f}"
              f"{r['rss']:>9.0f}{workers:>12}{r['pss']:>10.0f}{diff:>11.2e}")
    print(f"  floor = {best} (*); ratio < 1 means faster than the floor; floor speed-up of the best "
          f"executor: {spr[best] / min(spr[e] for e in executors):.2f}x")
    return spr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", default=["W1", "W2", "W3", "W4"])
    ap.add_argument("--executors", nargs="+", default=list(EXECUTORS), choices=EXECUTORS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--interleave", metavar="W", help="only: time fedloop and floor (a) round by round in one "
                                                      "process on workload W")
    ap.add_argument("--interleave-executor", default="sequential", choices=EXECUTORS,
                    help="fedloop's executor for --interleave")
    ap.add_argument("--two-nodes", metavar="W", help="only: the Ray engine on a one-node, then a two-node cluster on "
                                                    "this machine (one CPU each), on workload W")
    ap.add_argument("--ray-executor", default="vectorized", choices=("sequential", "vectorized", "auto"),
                    help="the executor inside each Ray actor for --two-nodes")
    args = ap.parse_args()
    if args.two_nodes:
        two_nodes(args.two_nodes, args.rounds, args.seed, args.ray_executor)
        return
    if args.interleave:
        interleaved(args.interleave, args.rounds, args.seed, args.interleave_executor)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {platform.python_version()}")
    start = time.perf_counter()
    for name in args.workloads:
        if name != "W4":
            report(name, None, args.executors, args.rounds, args.seed)
            continue
        scaling = {n: report("W3", n, args.executors, args.rounds, args.seed) for n in (10, 100, 1000)}
        print("\nW4: seconds per round as clients per round grow 10 -> 100 -> 1000 (linear would be 10x, 10x)")
        for kind in ("floor-a", "floor-b", *args.executors):
            s = [scaling[n][kind] for n in (10, 100, 1000)]
            print(f"  {kind:<12} {s[0]:.4f} -> {s[1]:.4f} -> {s[2]:.4f}  growth {s[1] / s[0]:.1f}x, "
                  f"{s[2] / s[1]:.1f}x")
    print(f"\nbenchmark wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
