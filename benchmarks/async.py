"""Virtual time to a target accuracy: FedBuff against synchronous FedAvg, with and without over-selection, under
heavy-tailed client speeds (the simulator's virtual clock, `[async] duration = "lognormal"`).

The workload: Fashion-MNIST, 100 clients (Dirichlet 0.5), the MLP, one local epoch of batch 32 at lr 0.05; each
client's mean task time is log-normal across clients (median 1 virtual second, sigma `--sigma`) and each task
jitters around it (sigma 0.2). Every method sees about the same number of updates per server step (10):
  fedavg            10 clients a round; a round lasts as long as its slowest client
  fedavg-over       13 asked (over_selection 0.3), the round ends at the 10th update, the rest are cancelled
  fedbuff           `--concurrency` clients in flight, a server step every 10 updates, polynomial staleness a = 0.5
Each run stops at the target test accuracy (or after `--max-rounds`); the figure is the virtual time at which it got
there, and the speed-up is FedAvg's time over the method's (median over seeds). Virtual time does not depend on
the machine, so the table repeats bit for bit; the wall time is printed for scale only.

    python benchmarks/async.py                          # target 0.80, seeds 0 1 2, sigma 1.0
    python benchmarks/async.py --target 0.82 --sigma 1.5 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

from fedloop.build import load_config
from fedloop.experiment import run_config

WORKLOAD = ["data.name=fashion-mnist", "model.name=mlp", "partition.num_clients=100", "partition.scheme=dirichlet",
            "partition.alpha=0.5", "partition.local_test_fraction=0", "client.epochs=1", "client.batch_size=32",
            "client.lr=0.05", "eval.federated=false", "eval.every=1", "checkpoint.every=100000",
            "async.duration=lognormal", "async.mean=1.0", "async.jitter=0.2"]


def methods(concurrency: int) -> dict[str, list[str]]:
    return {"fedavg": ["strategy.name=fedavg", "strategy.clients_per_round=10"],
            "fedavg-over": ["strategy.name=fedavg", "strategy.clients_per_round=10", "strategy.over_selection=0.3"],
            "fedbuff": ["strategy.name=fedbuff", f"strategy.concurrency={concurrency}", "strategy.buffer_size=10",
                        "strategy.staleness=polynomial", "strategy.staleness_a=0.5"]}


def time_to_target(sets: list[str], target: float, max_rounds: int) -> dict:
    """Run to the target (or max_rounds): rounds, virtual time and wall seconds when it got there."""
    cfg = load_config(None, [*WORKLOAD, *sets, f"rounds={max_rounds}", f"stop.target_accuracy={target}"])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_config(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    hit = next((r for r in rows if r.get("accuracy", 0.0) >= target), None)
    last = rows[-1]
    return {"reached": hit is not None, "rounds": (hit or last)["round"],
            "virtual_time": (hit or last)["virtual_time"], "best_accuracy": max(r.get("accuracy", 0.0) for r in rows),
            "wall_seconds": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=float, default=0.80)
    ap.add_argument("--sigma", type=float, default=1.0, help="log-normal spread of client speeds")
    ap.add_argument("--concurrency", type=int, default=30, help="FedBuff's clients in flight")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-rounds", type=int, default=400)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    results: dict[str, list[dict]] = {}
    for name, sets in methods(args.concurrency).items():
        for seed in args.seeds:
            out = time_to_target([*sets, f"seed={seed}", f"async.sigma={args.sigma}"], args.target, args.max_rounds)
            results.setdefault(name, []).append(out)
            print(f"{name} seed {seed}: {json.dumps(out)}", flush=True)
    base = statistics.median(r["virtual_time"] for r in results["fedavg"])
    print(f"\ntarget accuracy {args.target}, client speed sigma {args.sigma}, seeds {args.seeds}")
    print("| method | reached | rounds or steps (median) | virtual time to target (median) | speed-up vs fedavg |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        vt = statistics.median(r["virtual_time"] for r in runs)
        reached = sum(r["reached"] for r in runs)
        print(f"| {name} | {reached}/{len(runs)} | {statistics.median(r['rounds'] for r in runs):g} | {vt:.1f} | "
              f"{base / vt:.2f}x |")


if __name__ == "__main__":
    main()
