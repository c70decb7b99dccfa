"""SCAFFOLD against a hand computation in plain PyTorch: corrected local steps, the clients' control
variates kept between rounds, and the server's control variate averaged over the whole population."""

import pytest
import torch
from conftest import blobs, local_sgd, manual_partition, options
from conftest import small_model as model_fn

from fedloop import SGD, LocalSGD, Sampler, Scaffold, SimOptions, simulate
from fedloop.params import allclose
from fedloop.run import initial_params
from fedloop.sampling import round_rng, task_seed
from fedloop.types import ClientInfo

SIZES = [7, 13, 22, 38, 11]


@pytest.mark.parametrize(("executor", "momentum"), [("sequential", 0.0), ("vectorized", 0.0), ("sequential", 0.9),
                                                    ("vectorized", 0.9)])
def test_scaffold_matches_the_paper_with_partial_participation(executor, momentum):
    """The paper's SCAFFOLD (option II); with local momentum rho, c_i+ divides x - y_i by the weight momentum gives
    the K gradients, (K - rho (1 - rho^K) / (1 - rho)) / (1 - rho), instead of by K."""
    seed, rounds, epochs, bsz, lr, eta = 4, 3, 2, 4, 0.1, 0.8
    strategy = Scaffold(sampler=Sampler(3), server_opt=SGD(eta),
                        local=LocalSGD(epochs=epochs, batch_size=bsz, lr=lr, momentum=momentum))
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    res = simulate(model_fn, data, part, strategy, options(rounds, seed), sim=SimOptions(executor=executor))

    x = initial_params(model_fn, seed)
    zeros = {k: torch.zeros_like(v) for k, v in x.items()}
    c, ci = dict(zeros), {i: dict(zeros) for i in range(len(SIZES))}
    clients = [ClientInfo(i, n) for i, n in enumerate(SIZES)]
    chosen_by_round = []
    for r in range(1, rounds + 1):
        chosen = [ci_.client_id for ci_ in strategy.sampler.select(clients, round_rng(seed, r))]
        chosen_by_round.append(set(chosen))
        deltas, dcs = {}, {}
        for i in chosen:
            idx = torch.as_tensor(part.train[i])
            correction = {k: c[k] - ci[i][k] for k in x}  # every gradient corrected by c - c_i

            def drift(p, correction=correction):
                return sum((p[k] * correction[k]).sum() for k in p)
            y, steps = local_sgd(x, data.x_train[idx], data.y_train[idx], task_seed(seed, r, i), epochs, bsz, lr,
                                 momentum=momentum, penalty=drift)
            weight = sum(sum(momentum ** j for j in range(k)) for k in range(1, steps + 1))  # sum_k 1 + .. + rho^(k-1)
            new_ci = {k: ci[i][k] - c[k] + (x[k] - y[k]) / (weight * lr) for k in x}
            dcs[i] = {k: new_ci[k] - ci[i][k] for k in x}
            ci[i] = new_ci
            deltas[i] = {k: x[k] - y[k] for k in x}
        n = sum(SIZES[i] for i in chosen)
        x = {k: x[k] - eta * sum(SIZES[i] / n * deltas[i][k] for i in chosen) for k in x}
        c = {k: c[k] + sum(dcs[i][k] for i in chosen) / len(SIZES) for k in x}

    # some client took part twice, so its kept control variate mattered
    assert any(a & b for a, b in zip(chosen_by_round, chosen_by_round[1:], strict=False))
    assert allclose(res.state.params, x, rtol=1e-5, atol=1e-6)
    assert allclose(res.state.extras, c, rtol=1e-5, atol=1e-6)


def test_round_records_count_the_control_variates_that_travel():
    """SCAFFOLD sends c with every fit task and gets dc_i back with every update: bytes as they move."""
    strategy = Scaffold(sampler=Sampler(3), local=LocalSGD(epochs=1, batch_size=4, lr=0.1))
    res = simulate(model_fn, blobs(n_train=sum(SIZES)), manual_partition(SIZES), strategy, options(2))
    model_bytes = sum(p.numel() * 4 for p in model_fn().parameters())
    assert all(h["bytes_down"] == h["bytes_up"] == 3 * 2 * model_bytes for h in res.history)
