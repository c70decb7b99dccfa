"""Seconds per round of the jobs users run most: the embedded default job, the same under local DP, and the README's
central-DP example (issue 24's "nothing else slower" check; benchmarks/noise.py times the same privacy jobs). Each
job runs through `run_config` as `fedloop run` does, with its evaluation off so that the figure is the round itself; the
median round is printed, the first (warm-up) left out.

To compare two versions of fedloop, run this script with each one's source first on the path, one after the other:

    python benchmarks/jobs.py
    PYTHONPATH=<other checkout>/src python benchmarks/jobs.py --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import fedloop
from fedloop.build import load_config
from fedloop.experiment import run_config

LOCAL_DP = ["privacy.mode=local", "privacy.noise_multiplier=1.0"]
"""The default job under local DP, z = 1, C = 1."""
CENTRAL_DP = ["privacy.mode=central", "privacy.sampling=poisson", "model.name=logreg", "partition.num_clients=200",
              "strategy.clients_per_round=50", "privacy.noise_multiplier=2.1314"]
"""The README's central-DP example, z = 2.13."""

JOBS = {
    "default job": [],
    "default job, local DP (z = 1, C = 1)": LOCAL_DP,
    "central DP (the README's example, z = 2.13)": CENTRAL_DP,
}


def round_seconds(sets: list[str], rounds: int) -> float:
    """The median seconds of a round of the job `sets` describes, with evaluation off (the first round, which warms
    up, left out)."""
    cfg = load_config(None, [*sets, f"rounds={rounds}", "eval.every=1000", "eval.federated=false"])
    with tempfile.TemporaryDirectory() as out:
        history = run_config(cfg, out).history
    return statistics.median(r["seconds"] for r in history[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="runs of each job; the median of their medians is printed")
    args = p.parse_args()
    print(f"fedloop from {fedloop.__file__.rsplit('/fedloop/', 1)[0]}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    start = time.perf_counter()
    for name, sets in JOBS.items():
        runs = [round_seconds(sets, args.rounds) for _ in range(args.repeats)]
        print(f"  {name:<46} {statistics.median(runs) * 1e3:8.1f} ms/round  (runs: "
              f"{', '.join(f'{r * 1e3:.1f}' for r in runs)})", flush=True)
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
