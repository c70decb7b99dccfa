"""The strategy conformance table: every registered strategy through the same invariants — reply-order
invariance, determinism, an exact checkpoint round trip (a run resumed from a checkpoint ends where an
uninterrupted one does), bad hyperparameters rejected, and single-client equivalence. A strategy added to the
registry joins the table."""

import dataclasses
import random

import pytest
import torch
from conftest import assert_equal, blobs, manual_partition, small_model

from fedloop import ConfigError, LocalSGD, Sampler
from fedloop.client import FullGradient
from fedloop.experiment import build_fleet
from fedloop.loop import exchange, run_loop
from fedloop.reduction import reduce
from fedloop.run import initial_params
from fedloop.stops import MaxRounds
from fedloop.store import load_checkpoint, save_checkpoint
from fedloop.strategies import STRATEGIES

SIZES = [9, 14, 6, 21, 11, 8]
BASE_FIELDS = {"sampler", "local", "aggregator", "server_opt", "transforms"}


def make(name, sampler=Sampler(3)):
    cls = STRATEGIES[name]
    kw = {"sampler": sampler}
    if isinstance(next(f for f in dataclasses.fields(cls) if f.name == "local").default_factory(), LocalSGD):
        kw["local"] = LocalSGD(epochs=2, batch_size=4, lr=0.1)
    if name == "power_of_choice":
        kw["candidates"] = 4
    return cls(**kw)


def fleet_for(strategy, sizes=SIZES):
    return build_fleet(blobs(n_train=sum(sizes)), manual_partition(sizes), strategy, small_model)


def run(strategy, fleet, state, rounds):
    return run_loop(strategy, fleet, state, [MaxRounds(rounds)], federated_eval=False).state


def assert_same_state(a, b):
    assert a.round == b.round and a.seed == b.seed
    for part in ("params", "opt_state", "extras", "agg_state", "transform_state"):
        assert_equal(getattr(a, part), getattr(b, part))


NAMES = list(STRATEGIES)


@pytest.mark.parametrize("name", NAMES)
def test_reply_order_does_not_change_the_aggregate(name):
    strategy = make(name)
    fleet = fleet_for(strategy)
    state = strategy.init(initial_params(small_model, 1), 1)
    updates = exchange(strategy, fleet, state, None).updates
    reference, _ = reduce(updates, strategy, state, len(SIZES))
    for seed in range(4):
        shuffled = list(updates)
        random.Random(seed).shuffle(shuffled)
        agg, _ = reduce(shuffled, strategy, state, len(SIZES))
        assert_equal(agg.params, reference.params)
        assert_equal(agg.extras, reference.extras)
        assert agg.metrics == reference.metrics
        assert_same_state(strategy.apply(state, agg), strategy.apply(state, reference))


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_gives_the_same_bits_and_another_seed_does_not(name):
    strategy = make(name)
    a, b, c = (run(strategy, fleet_for(strategy), strategy.init(initial_params(small_model, s), s), 3)
               for s in (2, 2, 3))
    assert_same_state(a, b)
    assert not all(torch.equal(a.params[k], c.params[k]) for k in a.params)


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_holds_the_whole_server_state(name, tmp_path):
    """Two rounds, checkpoint, load, one more round: the state of three uninterrupted rounds, bit for bit. (FedBuff's
    tasks in flight between steps are not in a checkpoint, README "Asynchronous training": it is checked with a
    buffer as large as its concurrency, which leaves none in flight.)"""
    strategy = make(name)
    if name == "fedbuff":
        strategy = dataclasses.replace(strategy, concurrency=3, buffer_size=3)
    init = strategy.init(initial_params(small_model, 4), 4)
    straight = run(strategy, fleet_for(strategy), init, 3)
    fleet = fleet_for(strategy)
    save_checkpoint(tmp_path / "ck.safetensors", run(strategy, fleet, init, 2))
    loaded, _ = load_checkpoint(tmp_path / "ck.safetensors")
    assert_same_state(run(strategy, fleet, loaded, 3), straight)


@pytest.mark.parametrize("name", NAMES)
def test_bad_hyperparameters_are_rejected(name):
    cls = STRATEGIES[name]
    good = make(name)
    bad = [{"sampler": "ten"}, {"local": "sgd"}, {"aggregator": "mean"}, {"server_opt": 0.1},
           {"transforms": ("clip",)}]
    bad += [{f.name: -1} for f in dataclasses.fields(cls) if f.name not in BASE_FIELDS]  # its own, e.g. mu
    for kw in bad:
        with pytest.raises(ConfigError, match=f"{cls.__name__}.{next(iter(kw))} = "):
            dataclasses.replace(good, **kw)
    with pytest.raises(ConfigError, match="clients_per_round = 0"):
        Sampler(clients_per_round=0)
    with pytest.raises(ConfigError, match="lr = -0.1"):
        LocalSGD(lr=-0.1)


@pytest.mark.parametrize("name", NAMES)
def test_with_a_single_client_the_aggregate_is_its_update(name):
    strategy = make(name, Sampler(None))
    fleet = fleet_for(strategy, [17])
    state = strategy.init(initial_params(small_model, 5), 5)
    (update,) = exchange(strategy, fleet, state, None).updates
    agg, rejected = reduce([update], strategy, state, 1)
    assert not rejected and agg.num_clients == 1 and agg.num_examples == 17
    assert_equal(agg.params, update.params)
    step = OWN_STEPS.get(name, lambda u, s: u.params)(update, strategy)
    stepped, _ = strategy.server_opt.step(state.params, step, state.opt_state)
    assert_equal(strategy.apply(state, agg).params, stepped)


OWN_STEPS = {  # the server step of a lone client's update, for strategies whose step is not the update itself
    "fednova": lambda u, s: {k: v * float(u.extras["normaliser"]) for k, v in u.params.items()},  # |a|_1 d
    "feddyn": lambda u, s: {k: v + s.alpha * v / s.alpha for k, v in u.params.items()},  # delta + h / alpha, m = 1
    "qfedavg": lambda u, s: {k: v * (1 / s.h(u)) for k, v in u.params.items()},  # Delta_k / h_k
}


def test_the_table_covers_every_local_spec():
    assert {type(make(n).local) for n in NAMES} == {LocalSGD, FullGradient}
