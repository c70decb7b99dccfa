"""Seconds per round on the CPU and on every accelerator this machine has, as ratios in one run (issue 25).

Workloads (benchmarks/engine.py's): W1, the Fashion-MNIST CNN with 10 IID clients per round, run by the executor
`auto` picks for each device (on the CPU a process per core, on a GPU one batch of clients); W3, softmax regression
on 1,000 Gaussian clients with 100 per round, vectorized. Each (workload, device) does one warm-up round, then
--rounds timed rounds with no evaluation; the figure is the median. "vs cpu" is the CPU's seconds per round over
the device's (above 1: the device is faster), and "max |diff|" the largest difference between the device's final
params and the CPU's (the same work: float rounding only). On a machine without a GPU it prints the CPU figures and
says that no accelerator was found.

    python benchmarks/device.py                   # W1 and W3, 5 timed rounds
    python benchmarks/device.py --workloads W3 --rounds 10
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from engine import make_workload
from torch.nn import functional as F

from fedloop.device import name_of
from fedloop.experiment import build_fleet
from fedloop.loop import run_loop
from fedloop.run import initial_params
from fedloop.sim import SimOptions
from fedloop.stops import MaxRounds

EXECUTOR = {"W1": "auto", "W3": "vectorized"}


def accelerators() -> list[str]:
    """Every accelerator PyTorch can use here."""
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def seconds_per_round(name: str, device: str, rounds: int, seed: int) -> tuple[float, dict, str]:
    """Median seconds per timed round, the final params and the executor that ran."""
    w = make_workload(name, seed=seed)
    fleet = build_fleet(w.data, w.part, w.strategy, w.model_fn, F.cross_entropy, SimOptions(executor=EXECUTOR[name]),
                        device=device)
    try:
        state = w.strategy.init(initial_params(w.model_fn, seed), seed)
        result = run_loop(w.strategy, fleet, state, [MaxRounds(rounds + 1)], federated_eval=False)
        return statistics.median(r.seconds for r in result.records[1:]), dict(result.state.params), fleet.describe()
    finally:
        fleet.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", default=["W1", "W3"], choices=sorted(EXECUTOR))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    found = accelerators()
    gpus = ", ".join(f"{d} ({torch.cuda.get_device_name(d)})" if d.startswith("cuda") else d for d in found)
    print(f"PyTorch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}), {platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} threads; accelerators: {gpus or 'none found: CPU figures only'}")
    for name in args.workloads:
        print(f"\n{name}: {make_workload(name, seed=args.seed).about}")
        print(f"{'device':<10} {'executor':<28} {'s/round':>9} {'vs cpu':>8} {'max |diff|':>11}")
        base, cpu_params, executor = seconds_per_round(name, "cpu", args.rounds, args.seed)
        print(f"{'cpu':<10} {executor:<28} {base:>9.4f} {1.0:>8.2f} {0.0:>11.2e}")
        for device in found:
            seconds, params, executor = seconds_per_round(name, device, args.rounds, args.seed)
            diff = max(float((params[k].cpu() - cpu_params[k]).abs().max()) for k in cpu_params)
            print(f"{name_of(torch.device(device)):<10} {executor:<28} {seconds:>9.4f} {base / seconds:>8.2f} "
                  f"{diff:>11.2e}")


if __name__ == "__main__":
    main()
