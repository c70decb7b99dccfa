"""Robust aggregation under attack: final clean accuracy (and backdoor success) of every aggregator against every
attack at 10%, 20% and 30% malicious clients, on IID and non-IID (Dirichlet 0.5) clients; then the cost of each
aggregator against the mean at 10, 100 and 1,000 updates per round.

The accuracy table: digits (1,797 rows) over 20 clients, all 20 asked every round, MLP, FedAvg with E = 1, B = 10,
lr 0.05, 30 rounds. f (krum, multi_krum, bulyan) is the number of malicious clients, trimmed_mean's beta their
share (at least 0.1), norm_bound adaptive (the median norm). A round that an aggregator's assumption cannot cover
(bulyan needs n >= 4f + 3) is reported as refused. Each cell is one JSON file under benchmarks/results/robustness/,
so an interrupted table continues where it stopped.

    python benchmarks/robustness.py                 # both tables
    python benchmarks/robustness.py --cost-only     # only the aggregation cost
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fedloop.aggregators import AGGREGATORS
from fedloop.build import load_config
from fedloop.errors import ConfigError
from fedloop.experiment import run_config
from fedloop.store import atomic_write_text
from fedloop.types import Update

RESULTS = Path(__file__).resolve().parent / "results" / "robustness"
AGGS = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geomed", "centered_clip", "norm_bound")
ATTACKS = ("sign_flip", "gaussian", "scaled", "label_flip", "alie", "ipm", "backdoor")
FRACTIONS = (0.1, 0.2, 0.3)
SCHEMES = ("iid", "dirichlet")


def aggregator_sets(name: str, fraction: float, n: int) -> list[str]:
    f = round(fraction * n)
    sets = [f"aggregator.name={name}"]
    if name in ("krum", "multi_krum", "bulyan"):
        sets.append(f"aggregator.f={f}")
    if name == "trimmed_mean":
        sets.append(f"aggregator.beta={max(0.1, fraction)}")
    if name == "norm_bound":
        sets.append("aggregator.adaptive=true")
    return sets


def cell(agg: str, attack: str, fraction: float, scheme: str, args: argparse.Namespace) -> dict:
    sets = [f"seed={args.seed}", f"rounds={args.rounds}", "partition.num_clients=20", f"partition.scheme={scheme}",
            "partition.alpha=0.5", "strategy.clients_per_round=20", "client.epochs=1", "eval.every=10",
            "eval.federated=false", "sim.executor=vectorized", *aggregator_sets(agg, fraction, 20)]
    if attack != "none":
        sets += [f"attack.kind={attack}", f"attack.fraction={fraction}", f"attack.seed={args.seed}"]
    start = time.perf_counter()
    out = {"aggregator": agg, "attack": attack, "fraction": fraction if attack != "none" else 0.0,
           "scheme": scheme, "seed": args.seed, "rounds": args.rounds}
    try:
        res = run_config(load_config(None, sets))
    except ConfigError as exc:
        return {**out, "refused": str(exc).split(": ", 1)[-1]}
    return {**out, "accuracy": res.metrics.get("accuracy"), "backdoor_success": res.metrics.get("backdoor_success"),
            "seconds": round(time.perf_counter() - start, 1)}


def path_of(agg: str, attack: str, fraction: float, scheme: str, seed: int) -> Path:
    return RESULTS / f"{scheme}_{agg}_{attack}_{int(round(fraction * 100))}_seed-{seed}.json"


def accuracy_table(args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = [("none", 0.0)] + [(a, f) for a in ATTACKS for f in FRACTIONS]
    for scheme in SCHEMES:
        for agg in AGGS:
            for attack, fraction in settings:
                path = path_of(agg, attack, fraction, scheme, args.seed)
                if path.exists() and json.loads(path.read_text()).get("rounds") == args.rounds:
                    continue
                result = cell(agg, attack, fraction, scheme, args)
                atomic_write_text(path, json.dumps(result, indent=1) + "\n")
                print(f"{scheme} {agg} {attack} {fraction}: {result.get('accuracy', result.get('refused'))}",
                      flush=True)
    for scheme in SCHEMES:
        print(f"\n{scheme}: final accuracy (backdoor success), seed {args.seed}, {args.rounds} rounds")
        header = ["aggregator", "none"] + [f"{a} {int(f * 100)}%" for a in ATTACKS for f in FRACTIONS]
        print("| " + " | ".join(header) + " |")
        print("| --- |" + " ---: |" * (len(header) - 1))
        for agg in AGGS:
            row = [agg]
            for attack, fraction in settings:
                c = json.loads(path_of(agg, attack, fraction, scheme, args.seed).read_text())
                if "refused" in c:
                    row.append("refused")
                elif attack == "backdoor":
                    row.append(f"{c['accuracy']:.3f} ({c['backdoor_success']:.2f})")
                else:
                    row.append(f"{c['accuracy']:.3f}")
            print("| " + " | ".join(row) + " |")


def cost_table(repeats: int) -> None:
    """Seconds per aggregation of n updates of the default MLP's size (55,210 params), median of `repeats`."""
    shapes = {"a.weight": (200, 64), "a.bias": (200,), "b.weight": (200, 200), "b.bias": (200,),
              "c.weight": (10, 200), "c.bias": (10,)}
    numel = sum(torch.Size(s).numel() for s in shapes.values())
    print(f"\naggregation cost: s per round of n updates of {numel:,} params (median of {repeats}), and the ratio "
          "to the mean's")
    ns = (10, 100, 1000)
    print("| aggregator | " + " | ".join(f"n = {n}" for n in ns) + " |")
    print("| --- |" + " ---: |" * len(ns))
    gen = torch.Generator().manual_seed(0)
    ups = {n: [Update(i, 1, {k: torch.randn(s, generator=gen) for k, s in shapes.items()}, 10) for i in range(n)]
           for n in ns}
    base: dict[int, float] = {}
    for name in AGGS:
        agg = AGGREGATORS[name](**({"f": 1} if name in ("krum", "multi_krum", "bulyan") else {}))
        cells = []
        for n in ns:
            state = agg.init({})
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                agg.apply(ups[n], state)
                times.append(time.perf_counter() - start)
            t = statistics.median(times)
            base.setdefault(n, t)
            cells.append(f"{t:.4f} ({t / base[n]:.1f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cost-only", action="store_true")
    args = ap.parse_args()
    if not args.cost_only:
        accuracy_table(args)
    cost_table(args.repeats)


if __name__ == "__main__":
    main()
