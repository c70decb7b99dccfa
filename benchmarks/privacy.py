"""Utility of central DP (DP-FedAvg): test accuracy against epsilon, with fixed and with adaptive clipping.

Fashion-MNIST (60,000 training rows) over 2,000 clients (Dirichlet 1.0 labels), Poisson sampling of 100
clients per round in expectation (q = 0.05), delta = 1e-5. For each target epsilon the noise multiplier is
calibrated by dp-accounting for the run's rounds, then the run reports the epsilon it actually spent. Each cell
(epsilon, clipping, seed) is one run and one JSON file under benchmarks/results/privacy/, so an interrupted table
continues where it stopped; `fedloop privacy` reads these cells for its expected accuracy cost.

    python benchmarks/privacy.py                        # the table in benchmarks/RESULTS.md
    python benchmarks/privacy.py --seeds 1 --rounds 50  # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from fedloop.build import load_config
from fedloop.experiment import run_config
from fedloop.store import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "privacy"
EPSILONS = (None, 8.0, 4.0, 2.0, 1.0)  # None: no privacy


def settings(epsilon: float | None, clipping: str, seed: int, args: argparse.Namespace) -> list[str]:
    sets = [f"seed={seed}", f"rounds={args.rounds}", "data.name=fashion-mnist", "model.name=logreg",
            "partition.scheme=dirichlet", "partition.alpha=1.0", f"partition.num_clients={args.clients}",
            "partition.local_test_fraction=0", f"strategy.clients_per_round={args.per_round}", "client.epochs=1",
            "client.batch_size=10", "client.lr=0.05", "server_opt.name=sgd", "server_opt.lr=1.0",
            "server_opt.momentum=0.9", "eval.every=10", "eval.federated=false", "sim.executor=vectorized"]
    if epsilon is None:
        return sets + ["privacy.sampling=poisson"]
    sets += ["privacy.mode=central", "privacy.sampling=poisson", f"privacy.target_epsilon={epsilon}",
             "privacy.delta=1e-5", f"privacy.clipping={clipping}"]
    return sets + (["privacy.clip=0.1", "privacy.target_quantile=0.5"] if clipping == "adaptive"
                   else [f"privacy.clip={args.clip}"])


def cell_path(epsilon: float | None, clipping: str, seed: int) -> Path:
    eps = "inf" if epsilon is None else f"{epsilon:g}"
    return RESULTS / f"eps-{eps}_{'none' if epsilon is None else clipping}_seed-{seed}.json"


def run_cell(epsilon: float | None, clipping: str, seed: int, args: argparse.Namespace) -> dict:
    cfg = load_config(None, settings(epsilon, clipping, seed, args))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = run_config(cfg, Path(out) / "run")
    summary = result.summary
    return {"dataset": "fashion-mnist", "mode": "none" if epsilon is None else "central",
            "clipping": clipping, "epsilon_target": epsilon, "epsilon": summary.get("epsilon"),
            "delta": summary.get("delta"), "noise_multiplier": (summary.get("privacy") or {}).get("noise_multiplier"),
            "clip_norm": (summary.get("privacy") or {}).get("clip_norm"), "seed": seed, "rounds": summary["rounds"],
            "clients": args.clients, "per_round": args.per_round, "accuracy": summary["accuracy"],
            "loss": summary["loss"], "seconds": round(time.perf_counter() - start, 1), "settings": settings(
                epsilon, clipping, seed, args)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--clip", type=float, default=0.3, help="the fixed clip norm")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    cells = [(None, "fixed")] + [(e, c) for e in EPSILONS if e is not None for c in ("fixed", "adaptive")]
    for epsilon, clipping in cells:
        for seed in range(args.seeds):
            path = cell_path(epsilon, clipping, seed)
            if path.exists() and json.loads(path.read_text()).get("rounds") == args.rounds:
                continue
            cell = run_cell(epsilon, clipping, seed, args)
            atomic_write_text(path, json.dumps(cell, indent=1) + "\n")
            print(f"eps {epsilon} {clipping} seed {seed}: accuracy {cell['accuracy']:.4f}, epsilon spent "
                  f"{cell['epsilon']}, z {cell['noise_multiplier']}, {cell['seconds']} s", flush=True)
    print(f"\n| epsilon (delta 1e-5) | clipping | noise multiplier | accuracy (mean of {args.seeds} seeds) "
          "| min | max |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for epsilon, clipping in cells:
        runs = [json.loads(cell_path(epsilon, clipping, s).read_text()) for s in range(args.seeds)]
        acc = [r["accuracy"] for r in runs]
        z = "-" if epsilon is None else f"{runs[0]['noise_multiplier']:.3f}"
        print(f"| {'∞' if epsilon is None else f'{epsilon:g}'} | {'-' if epsilon is None else clipping} | {z} | "
              f"{statistics.mean(acc):.4f} | {min(acc):.4f} | {max(acc):.4f} |")


if __name__ == "__main__":
    main()
