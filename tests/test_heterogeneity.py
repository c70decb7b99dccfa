"""[heterogeneity]: stragglers that do part of their local work (kept or dropped), and availability traces the
sampler draws from, recorded per round in metrics.jsonl; the same bits under every executor."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import assert_close, blobs, local_sgd, manual_partition, options, run_sizes
from conftest import small_model as model_fn

from fedloop import ConfigError, FedAvg, FedProx, FedSGD, LocalSGD, Sampler, simulate
from fedloop.build import load_config, run_options
from fedloop.experiment import build_fleet
from fedloop.heterogeneity import MAX_STEPS, Heterogeneity
from fedloop.loop import exchange
from fedloop.params import allclose
from fedloop.run import initial_params
from fedloop.sampling import task_seed
from fedloop.strategies import FedNova

SIZES = [9, 14, 6, 21, 11, 8, 17, 12]
LOCAL = LocalSGD(epochs=2, batch_size=4, lr=0.1)


def one_round(strategy, hetero, seed=3):
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    fleet = build_fleet(data, part, strategy, model_fn)
    state = strategy.init(initial_params(model_fn, seed), seed)
    return exchange(strategy, fleet, state, None, hetero), data, part, state


def test_stragglers_kept_train_exactly_their_capped_steps():
    """FedNova's normaliser is the number of steps a client took (no momentum): for a kept straggler it is its cap,
    and its update is what that many steps of SGD give, by hand."""
    strategy = FedNova(sampler=Sampler(6), local=LOCAL)
    got, data, part, state = one_round(strategy, Heterogeneity(stragglers=0.5, partial_work="keep"))
    assert got.conditions == {"available": len(SIZES), "stragglers": 3}
    full = {u.client_id: 2 * -(-SIZES[u.client_id] // 4) for u in got.updates}
    taken = {u.client_id: int(u.extras["normaliser"]) for u in got.updates}
    short = [c for c in taken if taken[c] < full[c]]
    assert len(got.updates) == 6 and len(short) == 3 and all(1 <= taken[c] for c in short)
    for c in short:
        idx = torch.as_tensor(part.train[c])
        x = state.params
        y, steps = local_sgd(x, data.x_train[idx], data.y_train[idx], task_seed(3, 1, c), 2, 4, 0.1)
        capped = _capped(x, data.x_train[idx], data.y_train[idx], task_seed(3, 1, c), 4, 0.1, taken[c])
        update = next(u for u in got.updates if u.client_id == c)
        assert allclose({k: v * taken[c] for k, v in update.params.items()},
                        {k: x[k] - capped[k] for k in x}, rtol=1e-5, atol=1e-6)
        assert not allclose(capped, y)  # fewer steps than the full work: a different model


def _capped(x, xs, ys, seed, bsz, lr, cap):
    m = model_fn()
    m.load_state_dict(x)
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    gen, steps = torch.Generator().manual_seed(seed), 0
    while steps < cap:
        order = torch.randperm(len(ys), generator=gen)
        for s in range(0, len(ys), bsz):
            if steps == cap:
                break
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xs[order[s:s + bsz]]), ys[order[s:s + bsz]]).backward()
            opt.step()
            steps += 1
    return {k: v.detach() for k, v in m.state_dict().items()}


def test_stragglers_dropped_are_failures_that_train_nothing():
    got, *_ = one_round(FedAvg(sampler=Sampler(6), local=LOCAL), Heterogeneity(stragglers=0.5))
    dropped = [f for f in got.failures if f.reason.startswith("straggler")]
    assert len(dropped) == 3 and len(got.updates) == 3 and len(got.selected) == 6
    assert "its update dropped (partial_work = 'drop')" in dropped[0].reason
    assert {u.client_id for u in got.updates}.isdisjoint(f.client_id for f in dropped)


@pytest.mark.parametrize("executor", ["vectorized", "processes"])
def test_every_executor_trains_the_stragglers_as_the_sequential_one(executor):
    hetero = Heterogeneity(stragglers=0.5, partial_work="keep")
    strategy = FedProx(mu=0.1, sampler=Sampler(6), local=LOCAL)
    ref = run_sizes(strategy, SIZES, "sequential", heterogeneity=hetero)
    res = run_sizes(strategy, SIZES, executor, heterogeneity=hetero)
    assert_close(res.state.params, ref.state.params)
    assert [h["stragglers"] for h in res.history] == [3, 3, 3]
    plain = run_sizes(strategy, SIZES, "sequential")
    assert not allclose(plain.state.params, ref.state.params)


def test_availability_traces_decide_whom_the_sampler_may_draw(tmp_path):
    clients = [c for c in build_fleet(blobs(n_train=sum(SIZES)), manual_partition(SIZES), FedAvg(),
                                      model_fn).clients()]
    bern = Heterogeneity(availability="bernoulli", rate=0.4)
    counts = [len(bern.available(clients, 1, r)) for r in range(1, 401)]
    assert abs(np.mean(counts) / len(SIZES) - 0.4) < 0.03
    assert bern.available(clients, 1, 5) == bern.available(clients, 1, 5) != bern.available(clients, 2, 5)
    day = Heterogeneity(availability="diurnal", period=6, duty=0.5)
    on = np.array([[c in {x.client_id for x in day.available(clients, 1, r)} for c in range(len(SIZES))]
                   for r in range(1, 25)])
    assert (on.sum(0) == 12).all()  # each client on for 3 of every 6 rounds
    assert (on[:6] == on[6:12]).all() and len({tuple(col) for col in on.T}) > 1  # periodic, phases differ
    trace = tmp_path / "avail.csv"
    trace.write_text("client,round\n0,1\n3,1\n5,2\n")
    csv = Heterogeneity(availability=str(trace))
    assert [c.client_id for c in csv.available(clients, 0, 1)] == [0, 3]
    assert [c.client_id for c in csv.available(clients, 0, 3)] == []


def test_a_run_records_availability_and_skips_a_round_with_nobody_on(tmp_path):
    trace = tmp_path / "avail.csv"
    trace.write_text("0,1\n1,1\n2,1\n4,3\n5,3\n")  # round 2: nobody
    strategy = FedAvg(sampler=Sampler(2), local=LOCAL)
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    res = simulate(model_fn, data, part, strategy, options(3, 1, heterogeneity=Heterogeneity(availability=str(trace)),
                                                           out=tmp_path / "run"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["available"], r["clients"]) for r in rows] == [(1, 3, 2), (2, 0, 0), (3, 2, 2)]
    assert set(rows[0]["selected"]) <= {0, 1, 2} and set(rows[2]["selected"]) == {4, 5}
    assert res.state.round == 3


def test_heterogeneity_is_validated_in_the_toml(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[heterogeneity]\nstragglers = 0.9\npartial_work = "keep"\navailability = "diurnal"\n'
                    "period = 12\nduty = 0.25\n")
    hetero = run_options(load_config(good)).heterogeneity
    assert hetero == Heterogeneity(stragglers=0.9, partial_work="keep", availability="diurnal", period=12, duty=0.25)
    for text, match in [("stragglers = 1.5", "stragglers = 1.5"), ('partial_work = "late"', "partial_work"),
                        ('availability = "weekly"', "availability = 'weekly': expected one of always, bernoulli"),
                        ('availability = "missing.csv"', "missing.csv.*cannot read it"), ("rate = 0", "rate = 0")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[heterogeneity]\n{text}\n")
        with pytest.raises(ConfigError, match=match):
            run_options(load_config(bad))
    trace = tmp_path / "t.csv"
    trace.write_text("client,round\n0,1\nseven,2\n")
    with pytest.raises(ConfigError, match=r"t.csv, line 3: 'seven,2' is not a \(client, round\) pair"):
        Heterogeneity(availability=str(trace))


def test_stragglers_are_refused_where_partial_work_means_nothing():
    from fedloop.privacy.options import PrivacyOptions, privatize

    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    hetero = Heterogeneity(stragglers=0.3)
    with pytest.raises(ConfigError, match="'fedsgd' cannot straggle: its clients compute one full gradient"):
        simulate(model_fn, data, part, FedSGD(sampler=Sampler(4)), options(1, heterogeneity=hetero))
    dp = privatize(FedAvg(sampler=Sampler(4), local=LOCAL),
                   PrivacyOptions("dp-sgd", clip=1.0, noise_multiplier=1.0, secure_noise=False))
    with pytest.raises(ConfigError, match="DP-SGD accounts for every client's full number of steps"):
        simulate(model_fn, data, part, dp, options(1, heterogeneity=hetero))


def test_a_task_with_a_bad_step_cap_fails_that_client_only():
    strategy = FedAvg(sampler=Sampler(None), local=LOCAL)
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    fleet = build_fleet(data, part, strategy, model_fn)
    state = strategy.init(initial_params(model_fn, 0), 0)
    tasks = strategy.configure(state, fleet.clients())
    tasks[2] = replace(tasks[2], config={MAX_STEPS: 0})
    from fedloop.fleet import run
    replies = run(fleet, tasks, None)
    assert "max_steps = 0: expected an integer >= 1" in replies[2].reason
    assert sum(1 for r in replies if hasattr(r, "params")) == len(SIZES) - 1
