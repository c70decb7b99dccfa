"""The seed formulas of federated learning, checked against hand computations in plain PyTorch."""

import random

import torch
from conftest import blobs, manual_partition, options
from conftest import small_model as model_fn
from torch.nn import functional as F

from fedloop import SGD, FedAvg, FedSGD, LocalSGD, Sampler, WeightedMean, simulate
from fedloop.experiment import build_fleet
from fedloop.fleet import run
from fedloop.params import allclose, equal
from fedloop.reduction import reduce
from fedloop.run import initial_params
from fedloop.sampling import task_seed
from fedloop.types import Update

SIZES = [7, 13, 22, 38]  # unequal on purpose: weighting matters
ALL = Sampler(clients_per_round=None)


def client_rows(data, part, c):
    idx = torch.as_tensor(part.train[c])
    return data.x_train[idx], data.y_train[idx]


def grad_of(params: dict, x, y) -> dict:
    """Plain PyTorch: gradient of the mean cross-entropy at `params`."""
    m = model_fn()
    m.load_state_dict(params)
    F.cross_entropy(m(x), y).backward()
    return {k: p.grad.clone() for k, p in m.named_parameters()}


def all_clients_fedavg():
    """FedAvg over every client of the SIZES partition, its fleet, and its initial state."""
    strategy = FedAvg(sampler=ALL)
    fleet = build_fleet(blobs(n_train=sum(SIZES)), manual_partition(SIZES), strategy, model_fn, F.cross_entropy)
    return strategy, fleet, strategy.init(initial_params(model_fn, 0), 0)


def one_round(strategy, seed=3):
    data = blobs(n_train=sum(SIZES))
    part = manual_partition(SIZES)
    res = simulate(model_fn, data, part, strategy, options(1, seed))
    return data, part, initial_params(model_fn, seed), res.state.params


def test_fedsgd_samples_weighting_is_one_full_batch_gd_step_on_the_union():
    eta = 0.7
    data, _, w0, w1 = one_round(FedSGD(sampler=ALL, aggregator=WeightedMean("samples"), server_opt=SGD(eta)))
    g = grad_of(w0, data.x_train, data.y_train)  # union of all clients' data
    expected = {k: w0[k] - eta * g[k] for k in w0}
    assert allclose(w1, expected, rtol=1e-5, atol=1e-7)


def test_fedsgd_uniform_weighting_is_the_unweighted_mean_of_client_gradients():
    eta = 0.5
    data, part, w0, w1 = one_round(FedSGD(sampler=ALL, aggregator=WeightedMean("uniform"), server_opt=SGD(eta)))
    grads = [grad_of(w0, *client_rows(data, part, c)) for c in range(len(SIZES))]
    mean = {k: sum(g[k] for g in grads) / len(grads) for k in w0}
    expected = {k: w0[k] - eta * mean[k] for k in w0}
    assert allclose(w1, expected, rtol=1e-5, atol=1e-7)
    union = grad_of(w0, data.x_train, data.y_train)  # and it differs from the sample-weighted step
    assert not allclose(w1, {k: w0[k] - eta * union[k] for k in w0}, rtol=1e-3, atol=1e-5)


def test_fedavg_one_full_batch_epoch_with_server_lr_1_equals_fedsgd_with_server_lr_gamma():
    gamma = 0.3
    avg = FedAvg(sampler=ALL, local=LocalSGD(epochs=1, batch_size="full", lr=gamma), server_opt=SGD(1.0))
    sgd = FedSGD(sampler=ALL, server_opt=SGD(gamma))
    _, _, _, w_avg = one_round(avg)
    _, _, _, w_sgd = one_round(sgd)
    assert allclose(w_avg, w_sgd, rtol=1e-5, atol=1e-7)


def test_fedavg_is_weighted_model_averaging_of_hand_trained_local_sgd():
    """E=2 epochs, B=3, lr 0.1, the same batch order as the client: W1 = sum n_t/n * W_t."""
    seed, epochs, bsz, lr = 5, 2, 3, 0.1
    strategy = FedAvg(sampler=ALL, local=LocalSGD(epochs=epochs, batch_size=bsz, lr=lr))
    data, part, w0, w1 = one_round(strategy, seed=seed)
    locals_, n = [], []
    for c in range(len(SIZES)):
        x, y = client_rows(data, part, c)
        m = model_fn()
        m.load_state_dict(w0)
        gen = torch.Generator().manual_seed(task_seed(seed, 1, c))
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=gen)
            for s in range(0, len(y), bsz):
                b = order[s:s + bsz]
                m.zero_grad()
                F.cross_entropy(m(x[b]), y[b]).backward()
                with torch.no_grad():
                    for p in m.parameters():
                        p -= lr * p.grad
        locals_.append({k: v.detach() for k, v in m.state_dict().items()})
        n.append(len(y))
    expected = {k: sum(ni / sum(n) * w[k] for ni, w in zip(n, locals_, strict=True)) for k in w0}
    assert allclose(w1, expected, rtol=1e-5, atol=1e-6)


def test_aggregation_is_invariant_to_reply_order():
    strategy, fleet, state = all_clients_fedavg()
    updates = [r for r in run(fleet, strategy.configure(state, fleet.clients())) if isinstance(r, Update)]
    reference = reduce(updates, strategy, state)[0].params
    for s in range(5):
        shuffled = list(updates)
        random.Random(s).shuffle(shuffled)
        assert equal(reduce(shuffled, strategy, state)[0].params, reference)


def test_same_seed_gives_a_bit_identical_model_and_another_seed_does_not():
    data = blobs(n_train=200)
    from fedloop import make_partition

    part = make_partition(data, "dirichlet", 8, seed=1, alpha=0.5)
    strategy = FedAvg(sampler=Sampler(3), local=LocalSGD(epochs=2, batch_size=4, lr=0.1))
    runs = [simulate(model_fn, data, part, strategy, options(4, s, federated=True)).state.params
            for s in (11, 11, 12)]
    assert equal(runs[0], runs[1])
    assert not allclose(runs[0], runs[2])


def test_server_momentum_follows_the_heavy_ball_formula():
    opt = SGD(lr=0.5, momentum=0.9)
    w = {"w": torch.tensor([1.0, 2.0])}
    g1, g2 = {"w": torch.tensor([0.2, -0.4])}, {"w": torch.tensor([1.0, 1.0])}
    s = opt.init(w)
    w1, s = opt.step(w, g1, s)
    w2, s = opt.step(w1, g2, s)
    v1 = g1["w"]
    v2 = 0.9 * v1 + g2["w"]
    assert torch.allclose(w2["w"], w["w"] - 0.5 * v1 - 0.5 * v2)


def test_clients_train_on_copies_and_never_modify_the_global_params():
    strategy, fleet, state = all_clients_fedavg()
    before = {k: v.clone() for k, v in state.params.items()}
    replies = run(fleet, strategy.configure(state, fleet.clients()))
    assert equal(state.params, before)
    for u in replies:  # every update is its own tensor, not a view of the global params
        for k, v in u.params.items():
            assert v.data_ptr() != state.params[k].data_ptr()


def test_the_weighted_mean_can_divide_by_a_fixed_denominator():
    """DP-FedAvg's estimator: the weighted sum over the expected total weight, whoever replied."""
    ups = [Update(c, 1, {"w": torch.tensor([float(c + 1)])}, n) for c, n in ((0, 10), (1, 30))]
    actual, _ = WeightedMean("samples").apply(ups, {})
    assert torch.allclose(actual["w"], torch.tensor([(10 * 1 + 30 * 2) / 40]))
    fixed, _ = WeightedMean("samples", fixed_denominator=80.0).apply(ups, {})
    assert torch.allclose(fixed["w"], torch.tensor([(10 * 1 + 30 * 2) / 80]))
    uniform, _ = WeightedMean("uniform", fixed_denominator=4.0).apply(ups, {})
    assert torch.allclose(uniform["w"], torch.tensor([(1 + 2) / 4]))
