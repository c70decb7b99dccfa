"""What secure aggregation (SecAgg+) costs per round: time, bytes per client, and the server's unmasking work.

N light clients (one example each, one local step of softmax regression with 10^5 or 10^6 params) in one process,
every one asked each round, FedAvg with and without `secagg.enabled`, and with 10% of the clients dropping after
they shared their keys (before their masked input: the case where the server must rebuild their mask keys and
remove their pairwise masks, the costliest). Each cell runs `--rounds` rounds (the first warms up) and reports the
median of the rest:
  s/round        the round's wall time (every client's training, masking and messages, and the server's work)
  up, down       bytes per client per round: tensors and protocol messages as the fleet counts them (what a network
                 would carry before TLS and gRPC framing; benchmarks/net.py measures those)
  x plain        bytes up against the plain run's
  unmask s       the server's unmasking and decoding (secagg-server-unmasking in metrics.jsonl)
Each cell is one JSON file under benchmarks/results/secagg/, so an interrupted table continues where it stopped.

With --dp it compares distributed DP with central DP at the same epsilon instead: softmax regression on digits,
50 clients (Dirichlet 0.5), every one asked every round. Distributed DP at noise multiplier z puts
z sqrt(m / (t + 1)) of noise in the sum (m survivors, threshold t); central DP runs with that multiplier under
Poisson sampling at rate 1 (the same Gaussian release, add/remove-one), so both spend the same epsilon per round.
Each prints test accuracy per seed.

    python benchmarks/secagg.py                              # N = 10, 50, 100, 200; 10^5 and 10^6 params
    python benchmarks/secagg.py --clients 10 50 --params 100000 --rounds 3
    python benchmarks/secagg.py --dp --rounds 40 --seeds 3 --z 1.0
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedloop import FedAvg, Sampler, SimOptions
from fedloop.build import load_config
from fedloop.client import LocalSGD
from fedloop.data.examples import Dataset
from fedloop.data.partition import Partition
from fedloop.experiment import build_fleet, run_config
from fedloop.loop import RoundPolicy
from fedloop.run import EvalOptions, RunOptions, train
from fedloop.secagg.options import SecAggOptions
from fedloop.sim.mock import DropAt
from fedloop.store import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "secagg"
CLASSES = 10


def cell_path(n: int, params: int, mode: str) -> Path:
    return RESULTS / f"n-{n}_params-{params}_{mode}.json"


def run_cell(n: int, params: int, mode: str, rounds: int) -> dict:
    """One configuration: mode is "plain", "secagg" or "secagg-drop10"."""
    features = params // CLASSES - 1
    g = torch.Generator().manual_seed(0)
    data = Dataset("light", torch.randn(n, features, generator=g), torch.randint(0, CLASSES, (n,), generator=g),
                   torch.randn(1, features, generator=g), torch.zeros(1, dtype=torch.long), CLASSES)
    partition = Partition("one each", [np.array([c]) for c in range(n)], [np.array([], dtype=int)] * n, "test")

    def model_fn() -> nn.Module:
        return nn.Linear(features, CLASSES)

    strategy = FedAvg(Sampler(clients_per_round=n), LocalSGD(epochs=1, batch_size=1, lr=0.1))
    if mode != "plain":
        strategy = replace(strategy, secure=SecAggOptions(enabled=True))
    dropped = list(range(0, n, 10)) if mode == "secagg-drop10" else []
    fleet = DropAt(build_fleet(data, partition, strategy, model_fn, sim=SimOptions(executor="sequential")),
                   {"fit": dropped})
    options = RunOptions(rounds=rounds, seed=0, eval=EvalOptions(every=rounds, federated=False),
                         policy=RoundPolicy(min_updates=1))
    start = time.perf_counter()
    result = train(fleet, model_fn, strategy, options)
    rows = result.history[1:] or result.history
    return {
        "clients": n, "params": sum(p.numel() for p in model_fn().parameters()), "mode": mode, "rounds": rounds,
        "dropped": len(dropped),
        "seconds_per_round": statistics.median(r["seconds"] for r in rows),
        "bytes_up_per_client": statistics.median(r["bytes_up"] for r in rows) / n,
        "bytes_down_per_client": statistics.median(r["bytes_down"] for r in rows) / n,
        "unmask_seconds": statistics.median(r["timings"].get("secagg-server-unmasking", 0.0) for r in rows),
        "updates": rows[-1]["clients"], "wall_seconds": time.perf_counter() - start,
    }


DP_CLIENTS = 50


def dp_cell(mode: str, z: float, rounds: int, seed: int) -> dict:
    """One run of the --dp comparison: mode "distributed" (noise multiplier z) or "central" (z as given)."""
    sets = [f"seed={seed}", f"rounds={rounds}", "model.name=logreg", f"partition.num_clients={DP_CLIENTS}",
            f"strategy.clients_per_round={DP_CLIENTS}", "client.epochs=1", "client.lr=0.1", "eval.every=1000",
            "eval.federated=false", "sim.executor=sequential", f"privacy.mode={mode}", f"privacy.noise_multiplier={z}",
            "privacy.clip=1.0"]
    sets += ["secagg.enabled=true", "secagg.clip_range=1.0"] if mode == "distributed" else \
        ["privacy.sampling=poisson", "privacy.denominator=actual"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = run_config(load_config(None, sets), Path(out) / "run")
    return {"mode": mode, "z": z, "seed": seed, "rounds": rounds, "accuracy": result.summary["accuracy"],
            "epsilon": result.summary["epsilon"], "seconds": round(time.perf_counter() - start, 1)}


def compare_dp(args: argparse.Namespace) -> None:
    """Distributed DP against central DP at the same epsilon (see the module docstring)."""
    z = args.z
    threshold = SecAggOptions(enabled=True).threshold_for(DP_CLIENTS)
    z_central = z * math.sqrt(DP_CLIENTS / (threshold + 1))
    print(f"distributed z = {z} (threshold {threshold}: effective {z_central:.4f}); central z = {z_central:.4f}")
    print(f"{'mode':>12} {'seed':>5} {'epsilon':>9} {'accuracy':>9} {'seconds':>8}")
    for mode, zz in (("distributed", z), ("central", z_central)):
        for seed in range(args.seeds):
            path = RESULTS / f"dp_{mode}_z-{zz:.4f}_rounds-{args.rounds}_seed-{seed}.json"
            if args.fresh or not path.exists():
                atomic_write_text(path, json.dumps(dp_cell(mode, zz, args.rounds, seed), indent=1) + "\n")
            cell = json.loads(path.read_text())
            print(f"{mode:>12} {seed:>5} {cell['epsilon']:>9.4f} {cell['accuracy']:>9.4f} {cell['seconds']:>8}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="run every cell again")
    parser.add_argument("--dp", action="store_true", help="compare distributed with central DP instead")
    parser.add_argument("--seeds", type=int, default=3, help="--dp: seeds per mode")
    parser.add_argument("--z", type=float, default=1.0, help="--dp: distributed DP's noise multiplier")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    logging.getLogger("fedloop").setLevel(logging.ERROR)  # the dropped clients' warnings, one line each
    if args.dp:
        compare_dp(args)
        return
    torch.set_num_threads(1)
    print(f"{'N':>5} {'params':>9} {'mode':>14} {'s/round':>8} {'up/client':>11} {'down/client':>12} "
          f"{'x plain':>8} {'unmask s':>9} {'updates':>8}")
    for params in args.params:
        for n in args.clients:
            plain_up = None
            for mode in ("plain", "secagg", "secagg-drop10"):
                path = cell_path(n, params, mode)
                if args.fresh or not path.exists() or json.loads(path.read_text())["rounds"] != args.rounds:
                    atomic_write_text(path, json.dumps(run_cell(n, params, mode, args.rounds), indent=1) + "\n")
                cell = json.loads(path.read_text())
                plain_up = cell["bytes_up_per_client"] if mode == "plain" else plain_up
                ratio = cell["bytes_up_per_client"] / plain_up if plain_up else float("nan")
                print(f"{n:>5} {cell['params']:>9,} {mode:>14} {cell['seconds_per_round']:>8.3f} "
                      f"{cell['bytes_up_per_client']:>11,.0f} {cell['bytes_down_per_client']:>12,.0f} "
                      f"{ratio:>8.4f} {cell['unmask_seconds']:>9.3f} {cell['updates']:>8}", flush=True)


if __name__ == "__main__":
    main()
