"""Every fidelity table from its cells' JSON files, beside the published numbers, as Markdown (the tables of
benchmarks/fidelity/RESULTS.md). A cell that has not run is named as such.

    python benchmarks/fidelity/report.py
"""

from __future__ import annotations

import json
from typing import Any

import fedavg
import fedprox
import niid_bench
from cells import Cell


def load(cell: Cell) -> dict[str, Any] | None:
    """The cell's result, if it ran with the protocol the table script states now."""
    if not cell.path.exists():
        return None
    result = json.loads(cell.path.read_text())
    return result if result.get("settings") == list(cell.settings) else None


def minutes(result: dict[str, Any]) -> str:
    seconds = result["wall_seconds"]
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def niid_table() -> list[str]:
    out = ["| partition | algorithm | fedloop best accuracy % | published (Flower niid_bench) | within? | wall |",
           "| --- | --- | --- | --- | --- | --- |"]
    for cell in niid_bench.cells(tuple(niid_bench.PARTITIONS)):
        part, algo, _ = cell.name.split("_")
        published = niid_bench.PUBLISHED.get(part, {}).get(algo)
        pub = f"{published[0]:.2f} ± {published[1]}" if published else "—"
        result = load(cell)
        if result is None:
            if part in niid_bench.REQUIRED:
                out.append(f"| {part} | {algo} | not run | {pub} | | |")
            continue
        ours = 100 * result["best_accuracy"]
        within = "—" if not published else ("yes" if abs(ours - published[0]) <= published[1] else "no")  # the bar
        out.append(f"| {part} | {algo} | {ours:.2f} | {pub} | {within} | {minutes(result)} |")
    return out


def fedprox_table() -> list[str]:
    heads = " | ".join(f"loss r{r}" for r in fedprox.CHECKPOINTS)
    out = [f"| stragglers | method | {heads} | max loss after r20 | test accuracy | wall |",
           "| --- | --- | " + " | ".join("---" for _ in fedprox.CHECKPOINTS) + " | --- | --- | --- |"]
    for cell in fedprox.cells():
        f, method, _ = cell.name.split("_")
        result = load(cell)
        if result is None:
            out.append(f"| {f[len('stragglers'):]}% | {method} | not run | | | | | | |")
            continue
        losses = " | ".join(f"{result['training_loss'].get(str(r), float('nan')):.4f}" for r in fedprox.CHECKPOINTS)
        out.append(f"| {f[len('stragglers'):]}% | {method} | {losses} | {result['max_loss_after_20']:.4f} | "
                   f"{result['final_accuracy']:.4f} | {minutes(result)} |")
    return out


def fedavg_table() -> list[str]:
    """Rounds to the target per cell, and the factor the paper reports: FedSGD's rounds over the cell's, on the same
    model and partition (when both got there); the same for a lower target, LOWER below the main one, read from the
    curve."""
    lower = {m: round(t - LOWER, 2) for m, t in fedavg.MODELS.items()}
    out = ["| model | partition | algorithm | rounds to target | FedSGD's rounds / these | rounds to target - 5 "
           "points | FedSGD's rounds / these | best accuracy | wall |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    sgd: dict[tuple[str, str], tuple[int | None, int | None]] = {}
    for cell in fedavg.cells():
        model, part, *algo_parts, _ = cell.name.split("_")  # e.g. cnn_iid_E5_B10_seed0
        algo = "_".join(algo_parts)
        result = load(cell)
        if result is None:
            out.append(f"| {model} | {part} | {algo} | not run | | | | | |")
            continue
        at = (fedavg.first_round_at(result, fedavg.MODELS[model]), fedavg.first_round_at(result, lower[model]))
        if algo == "fedsgd":  # each block's first cell
            sgd[(model, part)] = at
        base = sgd.get((model, part), (None, None))
        cols = []
        for mine, theirs, target in zip(at, base, (fedavg.MODELS[model], lower[model]), strict=True):
            cols.append(f"{mine} ({target:.0%})" if mine is not None else
                        f"not reached in {result['last_round']} ({target:.0%})")
            cols.append(f"{theirs / mine:.1f}x" if algo != "fedsgd" and mine and theirs else "")
        out.append(f"| {model} | {part} | {algo} | {' | '.join(cols)} | {result['best_accuracy']:.4f} | "
                   f"{minutes(result)} |")
    return out


LOWER = 0.05
"""The second target of the FedAvg table: this much below the paper-style target."""


def main() -> None:
    for title, rows in (("NIID-Bench, Fashion-MNIST", niid_table()), ("FedProx, Synthetic(1,1)", fedprox_table()),
                        ("FedAvg paper protocol, Fashion-MNIST", fedavg_table())):
        print(f"### {title}\n")
        print("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
