"""Client selection, stop conditions, failures and evaluation in the round loop."""

import numpy as np
import pytest
import torch
from conftest import blobs, manual_partition, options
from torch import nn

from fedloop import ConfigError, FedAvg, LocalSGD, Sampler, SimOptions, StopOptions, make_partition, simulate
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

    res = simulate(Fragile, data, part, FedAvg(sampler=Sampler(None), local=LocalSGD(batch_size=30)), options(2),
                   sim=SimOptions(executor="sequential"))  # the crash depends on a batch's size: not batched
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


# --- the round policy, stop conditions and observers, in-process with MockFleet and ChaosFleet ---

from fedloop import AggregationError, ChaosFleet, MockFleet, Observer, PowerOfChoice, RoundPolicy  # noqa: E402
from fedloop.loop import run_loop  # noqa: E402
from fedloop.stops import MaxRounds  # noqa: E402
from fedloop.types import Update  # noqa: E402

W0 = {"w": torch.zeros(2)}


def constant_update(task):
    """Client c always sends the update (c + 1, c + 1), with 10 examples."""
    if task.kind == "evaluate":
        return Evaluation(task.client_id, task.round, 10, {"loss": float(task.client_id)})
    return Update(task.client_id, task.round, {"w": torch.full((2,), task.client_id + 1.0)}, 10)


class Recorder(Observer):
    def __init__(self):
        self.events = []

    def start(self, state, resumed):
        self.events.append(("start", state.round))

    def round(self, record, state):
        self.events.append(("round", record.round, record.failed))

    def end(self, result):
        self.events.append(("end", result.stop_reason))


def loop(fleet, strategy=None, rounds=2, **kw):
    strategy = strategy or FedAvg(sampler=Sampler(4))
    return run_loop(strategy, fleet, strategy.init(W0, 0), [MaxRounds(rounds)], federated_eval=False, **kw)


def test_a_round_short_of_min_updates_is_recorded_as_failed_and_run_again_from_the_same_state():
    calls = []

    def flaky(task):
        calls.append(task.round)
        if calls.count(1) <= 4:  # every client fails round 1's first attempt
            return Failure(task.client_id, task.round, "flaky network")
        return constant_update(task)

    recorder = Recorder()
    res = loop(MockFleet(flaky, 6), policy=RoundPolicy(min_updates=2), observers=[recorder])
    assert [(r.round, r.failed, r.updates) for r in res.records] == [(1, True, 0), (1, False, 4), (2, False, 4)]
    assert res.records[0].selected == res.records[1].selected  # the retry asks the same clients
    assert [f.reason for f in res.records[0].failures] == ["flaky network"] * 4
    assert recorder.events == [("round", 1, True), ("round", 1, False), ("round", 2, False)]
    assert res.state.round == 2


def test_a_round_that_keeps_failing_stops_the_run_after_its_retries():
    recorder = Recorder()
    with pytest.raises(AggregationError, match="round 1 failed 3 times: 0 of the 1 updates"):
        loop(MockFleet(lambda t: Failure(t.client_id, t.round, "down"), 6), policy=RoundPolicy(retries=2),
             observers=[recorder])
    assert recorder.events == [("round", 1, True)] * 3


def test_chaos_drops_are_seeded_and_a_retried_round_draws_again():
    def chaos_run():
        fleet = ChaosFleet(MockFleet(constant_update, 6), drop=0.3, seed=4)
        res = loop(fleet, rounds=4, policy=RoundPolicy(min_updates=4, retries=20))
        return [(r.round, r.selected, r.updates, r.failures, r.failed) for r in res.records], fleet.log, res

    (rows, log, res), (rows2, log2, _) = chaos_run(), chaos_run()
    assert rows == rows2 and log == log2  # seeded
    failed = [r for r in res.records if r.failed]
    assert failed and all(f.reason == "reply lost (chaos: drop)" for r in failed for f in r.failures)
    assert len(log) == sum(len(r.failures) for r in res.records)
    assert res.state.round == 4 and sum(not r.failed for r in res.records) == 4  # every retry drew again


def test_stragglers_miss_a_deadline_and_are_waited_for_without_one():
    fleet = ChaosFleet(MockFleet(constant_update, 6), delay=1.0)
    res = loop(fleet, rounds=1, policy=RoundPolicy(round_deadline=1.0, min_updates=0))
    assert res.records[0].updates == 0 and res.state.round == 1
    assert [f.reason for f in res.records[0].failures] == ["no reply before the 1 s deadline"] * 4
    assert torch.equal(res.state.params["w"], W0["w"])  # no update: the model did not move
    waited = loop(ChaosFleet(MockFleet(constant_update, 6), delay=1.0), rounds=1)
    assert waited.records[0].updates == 4


def test_non_finite_updates_are_refused_for_the_round_and_a_round_of_nothing_else_fails_then_diverges():
    fleet = ChaosFleet(MockFleet(constant_update, 6), corrupt=0.2, seed=1)
    res = loop(fleet, rounds=3, policy=RoundPolicy(retries=20))
    corrupt = {(r, c) for r, c, fault in fleet.log if fault == "corrupt"}
    assert corrupt and not any(r.failed for r in res.records)  # the round goes on without them
    refused = {(r.round, f.client_id) for r in res.records for f in r.failures}
    assert refused == corrupt and all(f.reason == "update refused: it holds NaN or infinite values"
                                      for r in res.records for f in r.failures)
    assert res.state.excluded == () and all(bool(torch.isfinite(v).all()) for v in res.state.params.values())
    diverged = loop(ChaosFleet(MockFleet(constant_update, 6), corrupt=1.0), policy=RoundPolicy(retries=1))
    assert diverged.stop_reason == "diverged" and diverged.state.round == 0  # the last finite state, kept
    assert [(r.round, r.failed) for r in diverged.records] == [(1, True), (1, True)]


def huge_from(attacker: int, value: float = 3e38):
    def handler(task):
        if task.kind == "evaluate":
            return Evaluation(task.client_id, task.round, 10, {"loss": 1.0})
        v = value if task.client_id == attacker else 0.01 * (task.client_id + 1)
        return Update(task.client_id, task.round, {"w": torch.full((2,), v)}, 10)
    return handler


@pytest.mark.parametrize("value", [3e38, -3e38, 1e38])
def test_a_client_whose_finite_update_would_break_the_round_is_refused_named_and_excluded(value, caplog):
    """3e38 overflows the params at once; 1e38 is within range when averaged, but its weighted sum (10 examples)
    overflows: the round is applied without it either way, and the client is never asked again."""
    fleet = MockFleet(huge_from(2, value), 6)
    res = loop(fleet, strategy=FedAvg(sampler=Sampler(6)), rounds=4)
    assert res.stop_reason == "rounds" and not any(r.failed for r in res.records)
    first = res.records[0]
    assert first.excluded == (2,) and [f.client_id for f in first.failures] == [2]
    assert "client excluded from the run" in first.failures[0].reason and "weighted norm" in first.failures[0].reason
    assert all(2 not in r.selected and not r.failures and not r.excluded for r in res.records[1:])
    assert {t.client_id for t in fleet.submitted if t.round > 1} == {0, 1, 3, 4, 5}
    assert res.state.excluded == (2,) and float(res.state.params["w"].abs().max()) < 1
    assert "client 2 excluded from the run's later rounds" in caplog.text
    assert first.to_json()["excluded"] == [2]


def test_updates_of_one_scale_that_overflow_together_are_honest_divergence_and_nobody_is_blamed():
    grows = {"n": 0}

    def diverging(task):
        grows["n"] += 1
        return Update(task.client_id, task.round, {"w": torch.full((2,), 1e38 * (1 + task.client_id / 10))}, 10)

    res = loop(MockFleet(diverging, 4), rounds=8, policy=RoundPolicy(retries=1))
    assert res.stop_reason == "diverged" and res.state.excluded == ()
    assert all(not r.excluded and not r.failures for r in res.records)


def test_the_loop_checks_the_fleets_capabilities_before_round_1():
    strategy = PowerOfChoice(sampler=Sampler(2), candidates=4)
    with pytest.raises(ConfigError, match="needs a fleet that can run several exchanges per round; mock cannot"):
        loop(MockFleet(constant_update, 6, capabilities=frozenset()), strategy)


def test_a_two_stage_round_probes_candidates_then_trains_the_worst_served():
    strategy = PowerOfChoice(sampler=Sampler(2), candidates=4)
    fleet = MockFleet(constant_update, 8)
    res = loop(fleet, strategy, rounds=1)
    probe, fit = fleet.submitted[:4], fleet.submitted[4:]
    assert {t.kind for t in probe} == {"evaluate"} and {t.broadcast.stage for t in probe} == {"probe"}
    assert all(t.config == {"split": "train"} for t in probe)
    candidates = sorted(t.client_id for t in probe)
    assert [t.client_id for t in fit] == candidates[-2:]  # the highest losses (loss = client id here)
    assert {t.kind for t in fit} == {"fit"} and res.records[0].selected == tuple(candidates[-2:])


def test_stop_conditions_are_a_list_and_the_last_round_is_evaluated():
    class Budget:
        def before(self, state):
            return "budget" if state.round >= 2 else None

        def after(self, record, state):
            return None

    strategy = FedAvg(sampler=Sampler(4))
    res = run_loop(strategy, MockFleet(constant_update, 6), strategy.init(W0, 0), [MaxRounds(10), Budget()],
                   evaluator=lambda p: {"loss": float(p["w"].sum())}, eval_every=5, federated_eval=False)
    assert res.stop_reason == "budget" and res.state.round == 2
    assert "loss" not in res.records[0].metrics and "loss" in res.records[1].metrics


def test_a_stop_request_while_a_round_is_written_ends_the_run_after_that_round(tmp_path):
    """SIGTERM (raising KeyboardInterrupt, as the command line's handler does) that lands while the observers write
    round 2 is held until they are done: the run stops after round 2, and every file agrees on it."""
    import os
    import signal

    from fedloop.observers import Observer

    class StopMidRound(Observer):
        def __init__(self):
            self.rounds = []

        def round(self, record, state):
            if state.round == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            self.rounds.append(state.round)  # reached only if the signal waits

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    stopper = StopMidRound()
    try:
        data = blobs(n_train=100, n_test=20)
        res = simulate(model_fn, data, make_partition(data, "iid", 4, seed=0), FedAvg(sampler=Sampler(4)),
                       options(6, out=tmp_path / "r", observers=(stopper,)))
    finally:
        signal.signal(signal.SIGTERM, before)
    assert res.stop_reason == "interrupted" and stopper.rounds == [1, 2] and res.state.round == 2
    assert res.summary["rounds"] == 2 and len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_failed_federated_evaluation_is_counted_and_named():
    data = blobs(n_train=300, n_test=50)
    part = make_partition(data, "dirichlet", 6, seed=0, alpha=1.0, local_test_fraction=0.2)
    sizes = [len(t) for t in part.test]
    target = next(i for i, n in enumerate(sizes) if sizes.count(n) == 1 and n not in (0, 50))

    class FailsOneEvaluation(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x):
            if not self.training and len(x) == sizes[target]:
                raise RuntimeError("evaluation crash")
            return self.lin(x)

    res = simulate(FailsOneEvaluation, data, part, FedAvg(sampler=Sampler(3)), options(2, federated=True),
                   sim=SimOptions(executor="sequential"))
    for h in res.history:
        assert h["eval_failures"] == 1 and h["eval_failed_clients"][0]["client"] == target
        assert "evaluation crash" in h["eval_failed_clients"][0]["reason"] and "fed_accuracy" in h
