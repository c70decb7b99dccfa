"""Client selection, stop conditions, failures and evaluation in the round loop."""

import numpy as np
import pytest
import torch
from conftest import blobs, manual_partition, options
from torch import nn

from fedloop import ConfigError, FedAvg, LocalSGD, Sampler, StopOptions, make_partition, simulate
from fedloop.fleet import run
from fedloop.loop import federated_metrics
from fedloop.sampling import round_rng
from fedloop.types import Broadcast, ClientInfo, Evaluation, Failure


def model_fn() -> nn.Module:
    return nn.Linear(5, 3)


def population(sizes):
    return [ClientInfo(i, n) for i, n in enumerate(sizes)]


def test_select_count_and_fraction_without_replacement_and_seeded():
    clients = population([10] * 50)
    s = Sampler(clients_per_round=7)
    picks = s.select(clients, round_rng(0, 1))
    assert len(picks) == 7 and len({c.client_id for c in picks}) == 7
    assert picks == s.select(clients, round_rng(0, 1))
    assert picks != s.select(clients, round_rng(0, 2))
    assert len(Sampler(fraction=0.1).select(clients, round_rng(0, 1))) == 5
    assert len(Sampler(clients_per_round=500).select(clients, round_rng(0, 1))) == 50


def test_uniform_selection_is_uniform_and_sample_weighted_selection_favours_big_clients():
    sizes = [1] * 10 + [100] * 10
    clients = population(sizes)
    uni = np.zeros(20)
    wtd = np.zeros(20)
    for r in range(400):
        for c in Sampler(clients_per_round=2).select(clients, round_rng(0, r)):
            uni[c.client_id] += 1
        for c in Sampler(clients_per_round=2, sampling="samples").select(clients, round_rng(0, r)):
            wtd[c.client_id] += 1
    assert abs(uni[:10].sum() - uni[10:].sum()) < 120  # 400 each in expectation
    assert wtd[10:].sum() > 10 * wtd[:10].sum()


def test_target_accuracy_stops_early_and_records_the_reason():
    data = blobs(n_train=300, n_test=100)
    part = make_partition(data, "iid", 5, seed=0, local_test_fraction=0.2)
    res = simulate(model_fn, data, part, FedAvg(sampler=Sampler(5), local=LocalSGD(epochs=2, lr=0.1)),
                   options(50, federated=True, stop=StopOptions(target_accuracy=0.8)))
    assert res.stop_reason == "target_accuracy"
    assert res.state.round < 50 and res.metrics["accuracy"] >= 0.8


def test_patience_stops_when_the_evaluation_loss_stops_improving():
    data = blobs(n_train=300, n_test=100)
    part = make_partition(data, "iid", 5, seed=0)
    tiny = FedAvg(sampler=Sampler(5), local=LocalSGD(epochs=1, lr=1e-12))  # loss can barely move
    res = simulate(model_fn, data, part, tiny, options(50, stop=StopOptions(patience=3)))
    assert res.stop_reason == "patience"
    assert res.state.round < 50


def test_failing_clients_become_failures_and_the_round_goes_on(caplog):
    data = blobs(n_train=95)
    part = manual_partition([5, 30, 30, 30])

    class Fragile(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x):
            if len(x) == 5:  # one client's batch size triggers a crash
                raise RuntimeError("simulated client crash")
            return self.lin(x)

    res = simulate(Fragile, data, part, FedAvg(sampler=Sampler(None), local=LocalSGD(batch_size=30)), options(2))
    assert res.state.round == 2
    assert [(h["clients"], h["failures"]) for h in res.history] == [(3, 1), (3, 1)]
    assert "simulated client crash" in caplog.text


def test_federated_metrics_are_example_weighted_with_spread():
    evals = [Evaluation(0, 1, 10, {"accuracy": 1.0, "loss": 0.1}),
             Evaluation(1, 1, 30, {"accuracy": 0.5, "loss": 0.3})]
    m = federated_metrics(evals)
    assert m["fed_accuracy"] == pytest.approx((10 * 1.0 + 30 * 0.5) / 40)
    assert m["fed_loss"] == pytest.approx((10 * 0.1 + 30 * 0.3) / 40)
    assert m["fed_accuracy_min"] == 0.5 and m["fed_accuracy_median"] == 0.75


def test_round_records_carry_traffic_and_federated_metrics():
    data = blobs(n_train=200)
    part = make_partition(data, "dirichlet", 6, seed=0, alpha=1.0, local_test_fraction=0.2)
    res = simulate(model_fn, data, part, FedAvg(sampler=Sampler(3)), options(2, federated=True))
    per_model = sum(p.numel() * 4 for p in model_fn().parameters())
    for h in res.history:
        assert h["bytes_down"] == 3 * per_model and h["bytes_up"] == 3 * per_model
        assert 0 <= h["fed_accuracy_min"] <= h["fed_accuracy_median"] <= 1
        assert h["train_loss"] > 0 and h["seconds"] > 0


def test_no_clients_is_a_clear_error():
    with pytest.raises(ConfigError, match="no clients"):
        Sampler().select([], round_rng(0, 1))


def test_failure_values_are_returned_by_the_client_app_for_bad_tasks():
    from fedloop.experiment import build_fleet
    from fedloop.types import Task

    data = blobs(n_train=40)
    part = make_partition(data, "iid", 2, seed=0)
    fleet = build_fleet(data, part, FedAvg(), model_fn, torch.nn.functional.cross_entropy)
    params = {k: v.detach() for k, v in model_fn().state_dict().items()}
    bad = Task(0, 1, "fit", Broadcast(0, {"weight": params["weight"]}), seed=0)  # a tensor is missing
    (reply,) = run(fleet, [bad])
    assert isinstance(reply, Failure) and "bias" in reply.reason
