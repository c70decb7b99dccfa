"""FedProx (Li et al., MLSys 2020), Figure 1's Synthetic(1,1) column: training loss per round of FedAvg, FedProx with
mu = 0 and FedProx with mu = 1 under 0%, 50% and 90% stragglers.

The protocol: Synthetic(1,1) with 30 devices (`data.name = "synthetic"`, one client per device), 10 devices a round
drawn uniformly, E = 20 epochs of batch 10, lr 0.01, multinomial logistic regression, 200 rounds, the sample-weighted
mean. Stragglers (`heterogeneity.stragglers`) stop after a number of local steps uniform in 1 .. full - 1 (the
paper: a number of epochs uniform in 1 .. E); FedAvg drops their work (`partial_work = "drop"`), FedProx keeps it.
The training loss is the global objective sum_k n_k F_k(w) / n on every device's training rows, measured each round
(`eval.federated_split = "train"`: `fed_loss`). The finding to reproduce: mu = 1 converges stably where FedAvg stalls
or diverges as stragglers grow, and keeping partial work (mu = 0) already helps.

    python benchmarks/fidelity/fedprox.py
"""

from __future__ import annotations

import math
from typing import Any

from cells import Cell, cli

TABLE = "fedprox"
METHODS = {"fedavg": ["strategy.name=fedavg", "heterogeneity.partial_work=drop"],
           "fedprox-mu0": ["strategy.name=fedprox", "strategy.mu=0.0", "heterogeneity.partial_work=keep"],
           "fedprox-mu1": ["strategy.name=fedprox", "strategy.mu=1.0", "heterogeneity.partial_work=keep"]}
STRAGGLERS = (0.0, 0.5, 0.9)
CHECKPOINTS = (20, 50, 100, 200)


def cells(seed: int = 0) -> list[Cell]:
    protocol = [f"seed={seed}", "rounds=200", "data.name=synthetic", "data.alpha=1.0", "data.beta=1.0",
                "data.num_users=30", "partition.scheme=natural", "partition.num_clients=30", "model.name=logreg",
                "strategy.clients_per_round=10", "client.epochs=20", "client.batch_size=10", "client.lr=0.01",
                "eval.every=1", "eval.federated=true", "eval.federated_split=train", "checkpoint.every=10"]
    return [Cell(TABLE, f"stragglers{int(f * 100)}_{m}_seed{seed}",
                 tuple(protocol + [f"heterogeneity.stragglers={f}"] + METHODS[m]))
            for f in STRAGGLERS for m in METHODS]


def training_loss(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    curve = [r.get("fed_loss", math.nan) for r in rounds]
    return {"training_loss": {str(r): curve[r - 1] for r in CHECKPOINTS if r <= len(curve)},
            "max_loss_after_20": max(curve[19:], default=None), "final_accuracy": rounds[-1].get("accuracy"),
            "curve": [round(c, 4) for c in curve]}


def main() -> None:
    cli(__doc__, lambda args: cells(args.seed), training_loss)

if __name__ == "__main__":
    main()
