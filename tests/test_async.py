"""Asynchronous training (FedBuff), the simulator's virtual clock, and over-selected synchronous rounds."""

import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import one_thread
from safetensors.torch import load_file

from fedloop import FedAvg, Sampler
from fedloop.build import check_runnable, load_config
from fedloop.errors import ConfigError
from fedloop.experiment import run_config
from fedloop.loop import run_loop
from fedloop.sampling import task_seeds
from fedloop.sim.clock import AsyncOptions, Durations, read_means
from fedloop.sim.mock import MockFleet
from fedloop.stops import MaxRounds
from fedloop.strategies import FedBuff
from fedloop.strategies.fedbuff import staleness_weight
from fedloop.types import Task, Update

W0 = {"w": torch.zeros(2)}
QUICK = ["rounds=3", "eval.federated=false", "partition.num_clients=12"]


def run(tmp_path, name, *sets):
    with one_thread():
        return run_config(load_config(None, [*QUICK, *sets]), tmp_path / name)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("clock", ["none", "lognormal"])
def test_fedbuff_with_a_full_buffer_and_constant_staleness_is_fedavg_bit_for_bit(tmp_path, clock):
    """buffer_size = concurrency = clients per round: every step takes every client it asked, all on the current
    model (staleness 0), so it is a FedAvg round, whatever the clock."""
    run(tmp_path, "fedavg", f"async.duration={clock}")
    run(tmp_path, "fedbuff", "strategy.name=fedbuff", "strategy.concurrency=10", "strategy.buffer_size=10",
        "strategy.staleness=constant", f"async.duration={clock}")
    avg, buff = load_file(tmp_path / "fedavg" / "model.safetensors"), load_file(tmp_path / "fedbuff" /
                                                                               "model.safetensors")
    assert avg.keys() == buff.keys() and all(torch.equal(avg[k], buff[k]) for k in avg)
    a, b = rows(tmp_path / "fedavg"), rows(tmp_path / "fedbuff")
    assert [r["selected"] for r in a] == [r["selected"] for r in b]
    assert all(r["staleness_max"] == 0 for r in b)


def by_hand_fleet():
    """Client c sends the update (c + 1, c + 1) with 10 examples, on the version it was sent."""
    def handler(task: Task) -> Update:
        return Update(task.client_id, task.round, {"w": torch.full((2,), task.client_id + 1.0)}, 10,
                      version=task.broadcast.version)
    return MockFleet(handler, 8)


def test_staleness_weights_by_hand_and_an_update_past_max_staleness_is_dropped_with_its_reason():
    """Without a clock, replies come in submission order: 4 clients in flight, 2 updates per step."""
    strategy = FedBuff(sampler=Sampler(4), concurrency=4, buffer_size=2, staleness="polynomial", staleness_a=0.5)
    fleet = by_hand_fleet()
    res = run_loop(strategy, fleet, strategy.init(W0, 0), [MaxRounds(3)], federated_eval=False)
    asked = [t.client_id for t in fleet.submitted]
    a, b, c, d, e, f = asked[:6]
    # step 1: a, b on version 0 (tau 0); step 2: c, d on version 0 (tau 1); step 3: e, f on version 1 (tau 1)
    expected, w = [], 0.0
    for pair, tau in (((a, b), 0), ((c, d), 1), ((e, f), 1)):
        s = (1 + tau) ** -0.5
        w -= sum(s * (x + 1) for x in pair) / 2
        expected.append(w)
    assert [r.selected for r in res.records] == [tuple(sorted(p)) for p in ((a, b), (c, d), (e, f))]
    assert [r.metrics["staleness_max"] for r in res.records] == [0, 1, 1]
    assert res.state.params["w"].tolist() == pytest.approx([expected[-1]] * 2, rel=1e-6)
    assert res.state.round == 3 and asked[2:4] == [c, d]

    strict = FedBuff(sampler=Sampler(4), concurrency=4, buffer_size=2, staleness="constant", max_staleness=0)
    fleet = by_hand_fleet()
    res = run_loop(strict, fleet, strict.init(W0, 0), [MaxRounds(2)], federated_eval=False)
    second = res.records[1]
    dropped = {f.client_id: f.reason for f in second.failures}
    assert set(dropped) == {c, d} and all(r == "update dropped: its update is from model version 0, 1 server steps "
                                               "old; max_staleness is 0" for r in dropped.values())
    assert second.updates == 2 and second.metrics["staleness_max"] == 0  # the slots refilled on version 1


def test_staleness_functions_follow_the_paper():
    assert staleness_weight("constant", 7, 0.5, 3) == 1.0
    assert staleness_weight("polynomial", 3, 0.5, 3) == pytest.approx(0.5)
    assert staleness_weight("hinge", 3, 2.0, 3) == 1.0
    assert staleness_weight("hinge", 5, 2.0, 3) == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="staleness -1"):
        staleness_weight("polynomial", -1, 0.5, 3)


def test_a_same_seed_async_run_writes_the_same_bits(tmp_path):
    sets = ["strategy.name=fedbuff", "strategy.concurrency=8", "strategy.buffer_size=3", "rounds=6",
            "async.duration=lognormal", "async.sigma=1.5"]
    run(tmp_path, "a", *sets)
    run(tmp_path, "b", *sets)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    strip = ("seconds", "timings")
    a = [{k: v for k, v in r.items() if k not in strip} for r in rows(tmp_path / "a")]
    b = [{k: v for k, v in r.items() if k not in strip} for r in rows(tmp_path / "b")]
    assert a == b
    times = [r["virtual_time"] for r in a]
    assert times == sorted(times) and times[0] > 0
    assert max(r["staleness_max"] for r in a) >= 1  # fast clients came back while slow ones trained
    assert all(r["in_flight"] == 5 for r in a)  # 8 in flight, 3 collected per step


def test_the_clock_orders_replies_by_virtual_time_and_over_selection_cancels_the_slowest(tmp_path):
    run(tmp_path, "over", "strategy.over_selection=0.5", "async.duration=lognormal", "seed=4",
        "partition.num_clients=20", "strategy.clients_per_round=6")
    cfg = load_config(None, [*QUICK, "async.duration=lognormal", "seed=4"])
    durations = Durations(AsyncOptions(duration="lognormal"), 4)
    clock = 0.0
    for r in rows(tmp_path / "over"):
        asked = r["selected"]
        assert len(asked) == 9 and r["clients"] == 6 and r["failures"] == 3
        seeds = task_seeds(cfg.seed, r["round"], asked).tolist()
        took = {c: durations.of(Task(c, r["round"], "fit", None, s, {})) for c, s in zip(asked, seeds, strict=True)}
        done = sorted(asked, key=lambda c: took[c])[:6]
        cancelled = {f["client"]: f["reason"] for f in r["failed_clients"]}
        clock += took[done[-1]]
        assert r["virtual_time"] == pytest.approx(clock)
        assert sorted(cancelled) == sorted(set(asked) - set(done))
        assert set(cancelled.values()) == {"cancelled: the round had its 6 replies"}


def test_durations_are_seeded_per_client_and_task_and_read_from_a_csv(tmp_path):
    opts = AsyncOptions(duration="lognormal", mean=2.0, sigma=1.0, jitter=0.0)
    a, b = Durations(opts, 1), Durations(opts, 1)
    assert [a.mean(c) for c in range(5)] == [b.mean(c) for c in range(5)]
    assert len({round(a.mean(c), 9) for c in range(5)}) == 5
    means = np.array([Durations(opts, 3).mean(c) for c in range(4000)])
    assert float(np.median(means)) == pytest.approx(2.0, rel=0.1)  # mean is the median client's time
    jittered = Durations(AsyncOptions(duration="lognormal", jitter=0.3), 1)
    times = [jittered.of(Task(0, 1, "fit", None, s, {})) for s in range(4000)]
    assert float(np.mean(times)) == pytest.approx(jittered.mean(0), rel=0.03)  # jitter keeps the client's mean
    assert jittered.of(Task(0, 1, "evaluate", None, 5, {})) == 0.0

    path = tmp_path / "speeds.csv"
    path.write_text("client,seconds\n0,1.5\n1,30\n")
    assert read_means(path) == {0: 1.5, 1: 30.0}
    csv = Durations(AsyncOptions(duration="csv", path=str(path), jitter=0.0), 0)
    assert csv.of(Task(1, 1, "fit", None, 9, {})) == 30.0
    with pytest.raises(ConfigError, match="has no row for client 2"):
        csv.mean(2)
    path.write_text("client,seconds\n0,-1\n")
    with pytest.raises(ConfigError, match=r"speeds.csv, row 2: client 0 with -1.0 s"):
        read_means(path)
    with pytest.raises(ConfigError, match='path = None: is the CSV of duration = "csv"'):
        AsyncOptions(duration="csv")


@pytest.mark.parametrize("sets, message", [
    (["strategy.name=fedbuff", "secagg.enabled=true"], "secure aggregation's four stages run in lock-step"),
    (["strategy.name=fedbuff", "privacy.mode=central", "privacy.noise_multiplier=1.0"],
     "FedBuff's server steps take whichever clients finish first"),
    (["strategy.name=fedbuff", "aggregator.name=median"], "FedBuff scales each update by its staleness"),
    (["strategy.name=fedbuff", "strategy.poisson=true"], "Poisson sampling and over-selection do not apply"),
    (["strategy.name=fedbuff", "strategy.concurrency=4", "strategy.buffer_size=5"],
     "5 updates per step cannot come from 4 clients in flight"),
    (["strategy.over_selection=0.3", "privacy.mode=central", "privacy.noise_multiplier=1.0"],
     "central DP's sampling analysis assumes the clients drawn are the clients counted"),
])
def test_what_does_not_compose_with_async_or_over_selection_is_refused_with_why(sets, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cfg = load_config(None, ["eval.federated=false", *sets])
        check_runnable(cfg)


def test_federated_evaluation_stragglers_and_a_deployed_clock_are_refused_for_an_async_run():
    with pytest.raises(ConfigError, match="eval.federated = true: strategy.name = 'fedbuff' keeps its clients"):
        check_runnable(load_config(None, ["strategy.name=fedbuff"]))
    with pytest.raises(ConfigError, match="heterogeneity.stragglers: strategy.name = 'fedbuff' is asynchronous"):
        check_runnable(load_config(None, ["strategy.name=fedbuff", "eval.federated=false",
                                          "heterogeneity.stragglers=0.5"]))
    with pytest.raises(ConfigError, match="async.duration = 'lognormal' sets the simulator's virtual clock"):
        check_runnable(load_config(None, ["async.duration=lognormal"]), deployed=True)
    with pytest.raises(ConfigError, match="needs a fleet that can keep tasks open across collects"):
        strategy = FedBuff(sampler=Sampler(4))
        run_loop(strategy, MockFleet(lambda t: None, 4, capabilities=frozenset()), strategy.init(W0, 0),
                 [MaxRounds(1)], federated_eval=False)


def test_over_selection_without_a_clock_ends_the_round_at_its_size_and_records_the_rest():
    fleet = MockFleet(lambda t: Update(t.client_id, t.round, {"w": torch.ones(2)}, 10), 8)
    strategy = FedAvg(sampler=Sampler(4, over_selection=0.5))
    res = run_loop(strategy, fleet, strategy.init(W0, 0), [MaxRounds(2)], federated_eval=False)
    for r in res.records:
        assert len(r.selected) == 6 and r.updates == 4
        assert [f.reason for f in r.failures] == ["cancelled: the round had its 4 replies"] * 2
    assert math.isclose(float(res.state.params["w"][0]), -2.0)


def test_a_resumed_async_run_continues_its_steps_and_its_virtual_time(tmp_path):
    sets = ["strategy.name=fedbuff", "strategy.concurrency=6", "strategy.buffer_size=2", "async.duration=lognormal",
            "checkpoint.every=1"]
    run(tmp_path, "run", *sets, "rounds=2")
    with one_thread():
        run_config(load_config(None, [*QUICK, *sets, "rounds=4"]), tmp_path / "run", resume=True)
    steps = rows(tmp_path / "run")
    assert [s["round"] for s in steps] == [1, 2, 3, 4]
    times = [s["virtual_time"] for s in steps]
    assert times == sorted(times) and times[2] > times[1] > 0
    assert steps[2]["in_flight"] == 4  # the resumed run refilled its slots on the checkpointed model
