"""FedNova, FedDyn, q-FedAvg and Ditto against their papers' update equations, computed by hand in plain PyTorch
(torch.optim.SGD on each client's batches, the server step written out), and the checks that keep a client from
steering them through what they claim."""

from dataclasses import replace

import pytest
import torch
from conftest import blobs, local_sgd, manual_partition, options
from conftest import small_model as model_fn
from torch.nn import functional as F

from fedloop import ConfigError, FedAvg, LocalSGD, Sampler, SimOptions, WeightedMean, simulate
from fedloop.client.app import FINE_TUNE
from fedloop.experiment import build_fleet
from fedloop.loop import exchange
from fedloop.params import allclose, norm
from fedloop.reduction import reduce
from fedloop.run import initial_params
from fedloop.sampling import round_rng, sub_seed, task_seed, task_seeds
from fedloop.strategies import Ditto, FedDyn, FedNova, QFedAvg
from fedloop.strategies.ditto import PERSONAL
from fedloop.strategies.fednova import normaliser
from fedloop.types import ClientInfo

SIZES = [7, 13, 22, 38, 11]


def client_rows(data, part, i):
    idx = torch.as_tensor(part.train[i])
    return data.x_train[idx], data.y_train[idx]


# --- FedNova -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("momentum", "lr_mu"), [(0.0, 0.0), (0.9, 0.0), (0.0, 0.05)])
def test_the_normaliser_is_what_sgd_does_to_a_constant_gradient(momentum, lr_mu):
    """|a|_1 is the factor by which tau steps of SGD (with momentum, or the proximal pull) scale a constant gradient:
    on a linear loss c.w (+ mu/2 |w - w0|^2), w0 - w_tau = lr |a|_1 c."""
    lr, c = 0.1, torch.tensor([1.0, -2.0, 0.5])
    for tau in (1, 2, 7, 30):
        w0 = torch.zeros(3)
        w = w0.clone().requires_grad_()
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum)
        for _ in range(tau):
            opt.zero_grad()
            ((c * w).sum() + 0.5 * (lr_mu / lr) * ((w - w0) ** 2).sum()).backward()
            opt.step()
        factor = (w0 - w.detach()) / (lr * c)
        torch.testing.assert_close(factor, torch.full((3,), normaliser(tau, momentum, lr_mu)), rtol=1e-5, atol=0)


@pytest.mark.parametrize("executor", ["sequential", "vectorized"])
def test_fednova_matches_the_paper_with_clients_taking_different_numbers_of_steps(executor):
    seed, rounds, epochs, bsz, lr, rho, eta = 4, 3, 2, 4, 0.05, 0.9, 0.7
    strategy = FedNova(sampler=Sampler(3), local=LocalSGD(epochs=epochs, batch_size=bsz, lr=lr, momentum=rho),
                       server_opt=replace(FedAvg().server_opt, lr=eta))
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    res = simulate(model_fn, data, part, strategy, options(rounds, seed), sim=SimOptions(executor=executor))

    x = initial_params(model_fn, seed)
    clients = [ClientInfo(i, n) for i, n in enumerate(SIZES)]
    taus = set()
    for r in range(1, rounds + 1):
        chosen = [c.client_id for c in strategy.sampler.select(clients, round_rng(seed, r))]
        n = sum(SIZES[i] for i in chosen)
        d, a = {}, {}
        for i in chosen:
            y, tau = local_sgd(x, *client_rows(data, part, i), task_seed(seed, r, i), epochs, bsz, lr, rho)
            taus.add(tau)
            a[i] = sum((1 - rho ** k) / (1 - rho) for k in range(1, tau + 1))  # a_i = [1-rho^tau, ..., 1-rho]/(1-rho)
            d[i] = {k: (x[k] - y[k]) / a[i] for k in x}
        tau_eff = sum(SIZES[i] / n * a[i] for i in chosen)
        x = {k: x[k] - eta * tau_eff * sum(SIZES[i] / n * d[i][k] for i in chosen) for k in x}
    assert float(res.state.extras["normaliser"]) == pytest.approx(tau_eff)  # the last round's
    assert len(taus) > 2  # the clients really took different numbers of steps
    assert allclose(res.state.params, x, rtol=1e-5, atol=1e-6)


def test_fednova_is_fedavg_when_every_client_takes_the_same_steps():
    local = LocalSGD(epochs=3, batch_size="full", lr=0.1, momentum=0.5)
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    nova, avg = (simulate(model_fn, data, part, s, options(3, 1)).state.params
                 for s in (FedNova(sampler=Sampler(4), local=local), FedAvg(sampler=Sampler(4), local=local)))
    assert allclose(nova, avg, rtol=1e-5, atol=1e-7)


def test_a_fednova_client_cannot_claim_more_normalisation_than_its_size_allows():
    strategy = FedNova(sampler=Sampler(None), local=LocalSGD(epochs=2, batch_size=4, lr=0.1))
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    fleet = build_fleet(data, part, strategy, model_fn)
    state = strategy.init(initial_params(model_fn, 0), 0)
    updates = exchange(strategy, fleet, state, None).updates
    honest, _ = reduce(updates, strategy, state, len(SIZES))
    # client 1 (13 rows: at most 2 * 4 = 8 steps) claims 1e6 steps' worth, client 3 a negative and client 4 no value
    lies = {1: {"normaliser": torch.tensor(1e6, dtype=torch.float64)},
            3: {"normaliser": torch.tensor(-2.0, dtype=torch.float64)}, 4: {}}
    tampered = [replace(u, extras=lies.get(u.client_id, u.extras)) for u in updates]
    agg, rejected = reduce(tampered, strategy, state, len(SIZES))
    assert [f.client_id for f in rejected] == [1, 3, 4]
    assert "outside [1, 8]" in rejected[0].reason and "13 examples" in rejected[0].reason
    assert "float scalar" in rejected[2].reason
    assert agg.num_clients == 2 and float(agg.extras["normaliser"]) < float(honest.extras["normaliser"]) * 2


def test_fednova_refuses_parts_that_break_its_normalisation():
    from fedloop.aggregators import Median
    from fedloop.privacy.options import PrivacyOptions, privatize

    with pytest.raises(ConfigError, match="aggregator.*tau_eff weighs the clients' normalisers"):
        FedNova(aggregator=Median())
    with pytest.raises(ConfigError, match="momentum or a proximal term, not both"):
        FedNova(mu=0.1, local=LocalSGD(momentum=0.9))
    with pytest.raises(ConfigError, match="central_dp cannot be used with strategy .fednova."):
        privatize(FedNova(sampler=Sampler(4)), PrivacyOptions("central", clip=1.0, noise_multiplier=1.0))
    with pytest.raises(ConfigError, match="'fednova' cannot be used with dp_sgd: FedNova's tau_eff"):
        privatize(FedNova(sampler=Sampler(4)), PrivacyOptions("dp-sgd", clip=1.0, noise_multiplier=1.0))
    with pytest.raises(ConfigError, match="expected the plain mean"):
        FedNova(aggregator=WeightedMean(fixed_denominator=3.0))


# --- FedDyn ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("executor", ["sequential", "vectorized"])
def test_feddyn_matches_algorithm_1_with_partial_participation(executor):
    seed, rounds, epochs, bsz, lr, alpha = 2, 4, 2, 4, 0.05, 0.3
    strategy = FedDyn(sampler=Sampler(3), alpha=alpha, local=LocalSGD(epochs=epochs, batch_size=bsz, lr=lr))
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    res = simulate(model_fn, data, part, strategy, options(rounds, seed), sim=SimOptions(executor=executor))

    x = initial_params(model_fn, seed)
    h = {k: torch.zeros_like(v) for k, v in x.items()}
    g = {i: {k: torch.zeros_like(v) for k, v in x.items()} for i in range(len(SIZES))}  # grad L_k(theta_k^{t-1})
    clients = [ClientInfo(i, n) for i, n in enumerate(SIZES)]
    chosen_by_round = []
    for r in range(1, rounds + 1):
        chosen = [c.client_id for c in strategy.sampler.select(clients, round_rng(seed, r))]
        chosen_by_round.append(set(chosen))
        local = {}
        for i in chosen:
            def regulariser(p, gi=g[i], x=x):
                return sum(-(p[k] * gi[k]).sum() + alpha / 2 * ((p[k] - x[k]) ** 2).sum() for k in p)
            local[i], _ = local_sgd(x, *client_rows(data, part, i), task_seed(seed, r, i), epochs, bsz, lr,
                                    penalty=regulariser)
            g[i] = {k: g[i][k] - alpha * (local[i][k] - x[k]) for k in x}
        h = {k: h[k] - alpha / len(SIZES) * sum(local[i][k] - x[k] for i in chosen) for k in x}
        x = {k: sum(local[i][k] for i in chosen) / len(chosen) - h[k] / alpha for k in x}
    assert any(a & b for a, b in zip(chosen_by_round, chosen_by_round[1:], strict=False))  # kept g_k mattered
    assert allclose(res.state.params, x, rtol=1e-5, atol=1e-6)
    assert allclose(res.state.extras, h, rtol=1e-5, atol=1e-6)


def test_feddyn_keeps_h_on_the_server_and_averages_uniformly():
    strategy = FedDyn(sampler=Sampler(4))
    state = strategy.init(initial_params(model_fn, 0), 0)
    (task, *_) = strategy.configure(state, [ClientInfo(i, n) for i, n in enumerate(SIZES)])
    assert task.extras == {}  # h never leaves the server
    with pytest.raises(ConfigError, match="averages the round's client models uniformly.*weighting = 'uniform'"):
        FedDyn(aggregator=WeightedMean("samples"))


# --- q-FedAvg ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("q", "lipschitz"), [(1.0, None), (5.0, 8.0), (0.0, None)])
def test_qfedavg_matches_algorithm_2(q, lipschitz):
    seed, rounds, epochs, bsz, lr = 3, 3, 2, 4, 0.1
    strategy = QFedAvg(sampler=Sampler(3), q=q, lipschitz=lipschitz,
                       local=LocalSGD(epochs=epochs, batch_size=bsz, lr=lr))
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    res = simulate(model_fn, data, part, strategy, options(rounds, seed))

    big_l = lipschitz if lipschitz is not None else 1 / lr
    x = initial_params(model_fn, seed)
    clients = [ClientInfo(i, n) for i, n in enumerate(SIZES)]
    for r in range(1, rounds + 1):
        chosen = [c.client_id for c in strategy.sampler.select(clients, round_rng(seed, r))]
        deltas, hs = [], []
        for i in chosen:
            xs, ys = client_rows(data, part, i)
            m = model_fn()
            m.load_state_dict(x)
            with torch.no_grad():
                f = float(F.cross_entropy(m(xs), ys)) + 1e-10  # F_k(w^t), with the authors' 1e-10
            y, _ = local_sgd(x, xs, ys, task_seed(seed, r, i), epochs, bsz, lr)
            dw = {k: big_l * (x[k] - y[k]) for k in x}
            deltas.append({k: f ** q * dw[k] for k in x})
            hs.append(q * f ** (q - 1) * sum(float((v.double() ** 2).sum()) for v in dw.values()) + big_l * f ** q)
        x = {k: x[k] - sum(d[k] for d in deltas) / sum(hs) for k in x}
    assert allclose(res.state.params, x, rtol=1e-4, atol=1e-6)


def test_qfedavg_with_q_0_is_fedavg_with_uniform_weights():
    local = LocalSGD(epochs=2, batch_size=4, lr=0.1)
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    q0, avg = (simulate(model_fn, data, part, s, options(3, 1)).state.params for s in (
        QFedAvg(sampler=Sampler(3), q=0.0, local=local),
        FedAvg(sampler=Sampler(3), local=local, aggregator=WeightedMean("uniform"))))
    assert allclose(q0, avg, rtol=1e-5, atol=1e-7)


def test_a_qfedavg_client_that_inflates_its_update_or_lies_about_its_loss_gets_a_damped_step():
    strategy = QFedAvg(sampler=Sampler(None), q=1.0, local=LocalSGD(epochs=1, batch_size=4, lr=0.1))
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    fleet = build_fleet(data, part, strategy, model_fn)
    state = strategy.init(initial_params(model_fn, 0), 0)
    updates = exchange(strategy, fleet, state, None).updates

    def step(us):
        agg, rejected = reduce(us, strategy, state, len(SIZES))
        new = strategy.apply(state, agg).params
        return norm({k: new[k] - state.params[k] for k in new}), rejected

    honest, _ = step(updates)
    for lie in ({"scale": 1e6}, {"loss": 1e-12}, {"loss": 1e12}):
        tampered = [replace(u, params={k: v * lie.get("scale", 1.0) for k, v in u.params.items()},
                            extras={"loss": torch.tensor(lie.get("loss", float(u.extras["loss"])),
                                                         dtype=torch.float64)}) if u.client_id == 2 else u
                    for u in updates]
        assert step(tampered)[0] < 3 * honest, lie
    bad = [replace(u, extras={"loss": torch.tensor(float("nan"), dtype=torch.float64)}) if u.client_id == 0 else u
           for u in updates]
    assert "not a finite number" in step(bad)[1][0].reason


# --- Ditto and fine-tuning evaluation ----------------------------------------------------------------------------

def evaluated(params, xs, ys):
    m = model_fn()
    m.load_state_dict(params)
    with torch.no_grad():
        out = m(xs)
    return float(F.cross_entropy(out, ys)), float((out.argmax(1) == ys).float().mean())


@pytest.mark.parametrize("executor", ["sequential", "processes"])
def test_ditto_matches_algorithm_1_and_reports_personal_accuracy_beside_the_global(executor):
    seed, rounds, epochs, bsz, lr, lam, personal_epochs = 6, 3, 1, 4, 0.1, 0.5, 2
    strategy = Ditto(sampler=Sampler(2), lam=lam, personal_epochs=personal_epochs,
                     local=LocalSGD(epochs=epochs, batch_size=bsz, lr=lr))
    data = blobs(n_train=sum(SIZES))
    part = replace(manual_partition(SIZES), test=[i[:5] for i in manual_partition(SIZES).train])  # 5 rows each
    res = simulate(model_fn, data, part, strategy, options(rounds, seed, federated=True),
                   sim=SimOptions(executor=executor, workers=2 if executor == "processes" else None))

    x = initial_params(model_fn, seed)
    personal = {}
    clients = [ClientInfo(i, n) for i, n in enumerate(SIZES)]
    for r in range(1, rounds + 1):
        chosen = [c.client_id for c in strategy.sampler.select(clients, round_rng(seed, r))]
        n = sum(SIZES[i] for i in chosen)
        local = {}
        for i in chosen:
            xs, ys = client_rows(data, part, i)
            s = task_seed(seed, r, i)
            local[i], _ = local_sgd(x, xs, ys, s, epochs, bsz, lr)
            def pull(p, x=x):
                return lam / 2 * sum(((p[k] - x[k]) ** 2).sum() for k in p)
            personal[i], _ = local_sgd(personal.get(i, x), xs, ys, sub_seed(s, PERSONAL), personal_epochs, bsz, lr,
                                       penalty=pull)
        x = {k: x[k] - sum(SIZES[i] / n * (x[k] - local[i][k]) for i in chosen) for k in x}
    assert allclose(res.state.params, x, rtol=1e-5, atol=1e-6)
    assert 0 < len(personal) < len(SIZES)  # some clients have a personal model, the others evaluate the global one
    last = res.history[-1]
    test = [tuple(t[:5] for t in client_rows(data, part, i)) for i in range(len(SIZES))]
    glob = [evaluated(x, xs, ys) for xs, ys in test]
    own = [evaluated(personal.get(i, x), xs, ys) for i, (xs, ys) in enumerate(test)]
    assert last["fed_loss"] == pytest.approx(sum(loss for loss, _ in glob) / len(SIZES), rel=1e-4)
    assert last["fed_personal_loss"] == pytest.approx(sum(loss for loss, _ in own) / len(SIZES), rel=1e-4)
    accs = torch.tensor([a for _, a in own], dtype=torch.float64)
    assert last["fed_personal_accuracy"] == pytest.approx(float(accs.mean()))
    assert last["fed_personal_accuracy_min"] == pytest.approx(float(accs.min()))
    assert last["fed_personal_accuracy_std"] == pytest.approx(float(accs.std(unbiased=False)))
    assert "fed_accuracy_std" in last and "personal_train_loss" in last  # the personal training, as reported


def test_fine_tune_steps_evaluate_each_client_after_k_local_steps_for_any_strategy():
    from fedloop.run import EvalOptions, RunOptions

    seed, k, bsz, lr = 2, 5, 4, 0.1
    strategy = FedAvg(sampler=Sampler(3), local=LocalSGD(epochs=1, batch_size=bsz, lr=lr))
    data = blobs(n_train=sum(SIZES))
    part = replace(manual_partition(SIZES), test=[i[:6] for i in manual_partition(SIZES).train])
    opts = RunOptions(rounds=2, seed=seed, eval=EvalOptions(federated=True, fine_tune_steps=k))
    res = simulate(model_fn, data, part, strategy, opts)
    x = res.state.params
    seeds = task_seeds(seed, 2, list(range(len(SIZES)))).tolist()
    tuned = []
    for i in range(len(SIZES)):
        xs, ys = client_rows(data, part, i)
        m = model_fn()
        m.load_state_dict(x)
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        gen, steps = torch.Generator().manual_seed(sub_seed(seeds[i], FINE_TUNE)), 0
        while steps < k:  # k steps, epochs repeating (client 0 has 7 rows: 2 batches an epoch)
            order = torch.randperm(len(ys), generator=gen)
            for s in range(0, len(ys), bsz):
                if steps == k:
                    break
                opt.zero_grad()
                F.cross_entropy(m(xs[order[s:s + bsz]]), ys[order[s:s + bsz]]).backward()
                opt.step()
                steps += 1
        tuned.append(evaluated({n: v.detach() for n, v in m.state_dict().items()}, xs[:6], ys[:6]))
    last = res.history[-1]
    assert last["fed_fine_tuned_loss"] == pytest.approx(sum(loss for loss, _ in tuned) / len(SIZES), rel=1e-4)
    assert last["fed_fine_tuned_loss"] < last["fed_loss"]
    assert "fed_fine_tuned_accuracy_median" in last
    with pytest.raises(ConfigError, match="fine_tune_steps = -1"):
        EvalOptions(fine_tune_steps=-1)


def test_feddyn_and_ditto_run_under_secure_aggregation_and_fednova_and_qfedavg_are_refused():
    from fedloop.secagg.options import SecAggOptions

    secure = SecAggOptions(enabled=True, clip_range=10.0)
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    for cls in (FedDyn, Ditto):  # their servers need only the (uniform) mean of the deltas and the count
        plain = cls(sampler=Sampler(len(SIZES)), local=LocalSGD(epochs=1, batch_size=4, lr=0.1))
        a, b = (simulate(model_fn, data, part, s, options(2, 1)).state.params
                for s in (plain, replace(plain, secure=secure)))
        assert allclose(a, b, rtol=0, atol=1e-5) and not allclose(a, initial_params(model_fn, 1))
    for cls in (FedNova, QFedAvg):  # their servers read each update's normaliser or loss
        with pytest.raises(ConfigError, match=f"strategy '{cls.name}': it reduces extras of each update"):
            replace(cls(sampler=Sampler(4)), secure=secure)


def test_federated_evaluation_on_the_training_split_is_the_global_objective():
    from fedloop.run import EvalOptions, RunOptions

    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    opts = RunOptions(rounds=2, seed=1, eval=EvalOptions(federated=True, federated_split="train"))
    res = simulate(model_fn, data, part, FedAvg(sampler=Sampler(3), local=LocalSGD(epochs=1, batch_size=4)), opts)
    loss, _ = evaluated(res.state.params, data.x_train, data.y_train)  # sum_k n_k F_k(w) / n over every row
    assert res.history[-1]["fed_loss"] == pytest.approx(loss, rel=1e-5)
