"""fedloop FedAvg against a plain PyTorch loop doing the same SGD steps, in one process.

Both train the same model from the same initial params on the same clients, with the same batches in the
same order, and average in the same way; the script prints each one's seconds per round, the ratio, and
the largest difference between the two final models (they should agree to float rounding).

    python benchmarks/fedavg_vs_plain.py                       # Fashion-MNIST CNN, 100 IID clients, 10/round
    python benchmarks/fedavg_vs_plain.py --data digits --model mlp --rounds 20
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

import fedloop
from fedloop.experiment import initial_params
from fedloop.local import evaluate
from fedloop.models import model_factory
from fedloop.strategies.base import round_rng, task_seed
from fedloop.types import ClientInfo


def plain_fedavg(model_fn, data, part, strategy, rounds: int, seed: int) -> dict[str, torch.Tensor]:
    """FedAvg written directly in PyTorch: no fleet, no tasks, no updates, just the arithmetic."""
    glob = initial_params(model_fn, seed)
    model = model_fn()
    clients = [ClientInfo(c, len(part.train[c])) for c in range(part.num_clients)]
    o = strategy.local
    for r in range(1, rounds + 1):
        chosen = strategy.select(clients, round_rng(seed, r))
        total = sum(c.num_examples for c in chosen)
        acc = {k: torch.zeros_like(v) for k, v in glob.items()}
        for c in chosen:
            rows = torch.as_tensor(part.train[c.client_id])
            model.load_state_dict(glob)
            opt = torch.optim.SGD(model.parameters(), lr=o.lr)
            gen = torch.Generator().manual_seed(task_seed(seed, r, c.client_id))
            for _ in range(o.epochs):
                order = rows[torch.randperm(len(rows), generator=gen)]
                for s in range(0, len(order), o.batch_size):
                    b = order[s:s + o.batch_size]
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(model(data.x_train[b]), data.y_train[b]).backward()
                    opt.step()
            for k, v in model.state_dict().items():
                acc[k].add_(glob[k] - v, alpha=c.num_examples / total)
        glob = {k: glob[k] - acc[k] for k in glob}
    return glob


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = fedloop.load_dataset(args.data, seed=args.seed)
    part = fedloop.make_partition(data, "iid", args.clients, args.seed, local_test_fraction=0.0)
    model_fn = model_factory(args.model, data.spec())
    strategy = fedloop.FedAvg(clients_per_round=args.per_round, local=fedloop.LocalSGD(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr))
    print(f"workload: {args.data}, {args.model}, {args.clients} IID clients, {args.per_round} per round, "
          f"E={args.epochs}, B={args.batch_size}, lr {args.lr}, {args.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}")

    plain_fedavg(model_fn, data, part, strategy, 1, args.seed)  # warm-up: first-call costs hit neither timing
    fedloop.simulate(model_fn, data, part, strategy, rounds=1, seed=args.seed, federated_eval=False)

    t0 = time.perf_counter()
    plain = plain_fedavg(model_fn, data, part, strategy, args.rounds, args.seed)
    t_plain = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = fedloop.simulate(model_fn, data, part, strategy, rounds=args.rounds, seed=args.seed,
                           eval_every=args.rounds + 1, federated_eval=False)
    t_fed = time.perf_counter() - t0

    # the last round ends with one centralized evaluation; time one alone and take it out
    t0 = time.perf_counter()
    evaluate(model_fn(), res.state.params, fedloop.Examples.all(data.x_test, data.y_test),
                           F.cross_entropy)
    t_eval = time.perf_counter() - t0
    t_fed -= t_eval

    diff = max(float((plain[k] - res.state.params[k]).abs().max()) for k in plain)
    print(f"plain PyTorch loop : {t_plain / args.rounds:8.3f} s/round")
    print(f"fedloop sequential : {t_fed / args.rounds:8.3f} s/round  (final evaluation of {t_eval:.2f} s removed)")
    print(f"ratio fedloop/plain: {t_fed / t_plain:8.3f}")
    print(f"max |param difference| between the two final models: {diff:.3g}")


if __name__ == "__main__":
    main()
