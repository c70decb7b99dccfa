"""A million-client population: 10 rounds of 100 clients, with peak RSS (issue 3's scale target).

Client data are generated on demand from (seed, client id) by a fixed Gaussian linear teacher (60-dim,
10 classes, 50 rows each); only the per-client sample counts are held for the whole population.

    python benchmarks/population.py                       # 1,000,000 clients, 10 rounds x 100
    python benchmarks/population.py --clients 100000 --executor sequential
"""

from __future__ import annotations

import argparse
import resource
import time

from torch.nn import functional as F

import fedloop
from fedloop.client import evaluate
from fedloop.data.gaussian import GaussianTeacher
from fedloop.loop import run_loop
from fedloop.models import model_factory
from fedloop.run import initial_params
from fedloop.sim import LocalFleet, gaussian_population
from fedloop.stops import MaxRounds


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=1_000_000)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--executor", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.perf_counter()
    teacher = GaussianTeacher(60, 10, args.seed)
    test = teacher.dataset(1, 5000)
    model_fn = model_factory("logreg", test.spec())
    strategy = fedloop.FedAvg(sampler=fedloop.Sampler(args.per_round), local=fedloop.LocalSGD(epochs=1, batch_size=10))
    population = gaussian_population(args.clients, 50, strategy, model_fn, F.cross_entropy, teacher=teacher,
                                     seed=args.seed)
    fleet = LocalFleet(population, args.executor)
    workspace = model_fn()
    held_out = fedloop.Examples.all(test.x_test, test.y_test)
    print(f"population of {args.clients:,} clients; peak RSS before training {peak_rss_mb():.0f} MB")
    state = strategy.init(initial_params(model_fn, args.seed), args.seed)
    result = run_loop(strategy, fleet, state, [MaxRounds(args.rounds)], federated_eval=False,
                      evaluator=lambda p: evaluate(workspace, p, held_out, F.cross_entropy), eval_every=args.rounds)
    fleet.close()
    per_round = [r.seconds for r in result.records]
    print(f"{args.rounds} rounds x {args.per_round} clients with the {fleet.describe()} executor: "
          f"{sum(per_round):.2f} s ({sum(per_round) / len(per_round):.3f} s/round, first round "
          f"{per_round[0]:.3f} s, includes listing the population)")
    print(f"test accuracy {result.final_metrics['accuracy']:.4f} after {result.state.round} rounds")
    print(f"peak RSS {peak_rss_mb():.0f} MB; wall {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
