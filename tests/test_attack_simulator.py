"""The attack simulator: a fixed, seeded set of malicious clients; each attack does what its paper says to the
upload or to the client's own data; runs with an attack are reproducible; a robust aggregator holds where the mean
fails."""

from statistics import NormalDist

import pytest
import torch
from conftest import blobs, manual_partition, options, small_model

from fedloop import FedAvg, Sampler, simulate
from fedloop.aggregators import Median
from fedloop.attacks import AttackFleet, AttackOptions, add_trigger, alie_z, attack_update, poisoned
from fedloop.build import load_config
from fedloop.data.examples import Examples
from fedloop.errors import ConfigError
from fedloop.experiment import build_fleet, run_config
from fedloop.sim import SimOptions

U = {"w": torch.tensor([1.0, -2.0, 3.0])}
HONEST = [{"w": torch.tensor([1.0, 0.0, 2.0])}, {"w": torch.tensor([3.0, 2.0, 2.0])}]


def test_the_malicious_clients_are_a_fixed_seeded_set_of_the_configured_fraction():
    a = AttackOptions("sign_flip", fraction=0.3, seed=1)
    bad = a.malicious(range(20))
    assert len(bad) == 6 and bad == a.malicious(list(reversed(range(20))))
    assert bad != AttackOptions("sign_flip", fraction=0.3, seed=2).malicious(range(20))
    assert AttackOptions().malicious(range(20)) == frozenset()


def test_each_attack_on_uploads_does_what_its_paper_says():
    def run(kind, **kw):
        return attack_update(AttackOptions(kind, **kw), U, HONEST, n=4, f=2, seed=5)["w"]

    assert torch.equal(run("sign_flip"), -U["w"]) and torch.equal(run("sign_flip", scale=3.0), -3 * U["w"])
    assert torch.equal(run("scaled"), 4 * U["w"])  # boosted by the round's clients (model replacement)
    assert torch.equal(run("zero"), torch.zeros(3)) and bool(torch.isnan(run("nan")).all())
    assert torch.equal(run("gaussian"), run("gaussian")) and not torch.equal(run("gaussian"), U["w"])
    mean, std = torch.tensor([2.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    assert torch.allclose(run("alie", z=1.5), mean - 1.5 * std)
    assert torch.allclose(run("ipm", epsilon=0.5), -0.5 * mean)
    # Baruch et al.: n = 50, f = 12 gives s = 14 supporters and z = Phi^-1(36 / 50)
    assert alie_z(50, 12) == pytest.approx(NormalDist().inv_cdf(36 / 50))


def test_data_poisoning_changes_only_the_malicious_clients_own_copy():
    x = torch.rand(10, 1, 8, 8)
    y = torch.arange(10) % 4
    rows = Examples(x, y, torch.tensor([0, 2, 4, 6]))
    flipped = poisoned(rows, AttackOptions("label_flip"), 4, 0, 1.0)
    assert torch.equal(flipped.y[flipped.index], 3 - y[rows.index])
    back = poisoned(rows, AttackOptions("backdoor", target=2, poison_fraction=0.5), 4, 0, 1.0)
    triggered = (back.x[:, 0, -3:, -3:] == 1.0).all(dim=(1, 2))
    assert int(triggered.sum()) == 2 and bool((back.y[triggered] == 2).all())
    assert torch.equal(x, x.clone()) and torch.equal(y, torch.arange(10) % 4)  # the shared arrays are untouched
    assert torch.equal(add_trigger(torch.zeros(5), 9.0), torch.tensor([0, 0, 9.0, 9.0, 9.0]))


def test_a_run_under_attack_is_reproducible_and_the_attack_replaces_only_malicious_uploads():
    data, part = blobs(n_train=120), manual_partition([12] * 10)
    attack = AttackOptions("sign_flip", fraction=0.3, seed=4)
    results = []
    for _ in range(2):
        fleet = AttackFleet(build_fleet(data, part, FedAvg(sampler=Sampler(10)), small_model), attack,
                            attack.malicious(range(10)))
        from fedloop.run import train

        results.append(train(fleet, small_model, FedAvg(sampler=Sampler(10)), options(3, 2)))
        assert {c for _, c in fleet.log} == attack.malicious(range(10))
    assert all(torch.equal(results[0].state.params[k], results[1].state.params[k]) for k in results[0].state.params)


@pytest.mark.parametrize("kind,fraction,kept", [("scaled", 0.3, 0.8), ("sign_flip", 0.2, 0.55)])
def test_the_median_holds_where_the_mean_fails(kind, fraction, kept):
    """IID clients; `kept` is the share of clean accuracy the median keeps (sign flipping biases a coordinate-wise
    median of 10 updates more than boosting does: the flipped values all sit on one side)."""
    base = ["rounds=8", "partition.scheme=iid", "partition.num_clients=10", "strategy.clients_per_round=10",
            "client.epochs=1", "sim.executor=vectorized"]
    sets = [*base, f"attack.kind={kind}", f"attack.fraction={fraction}", "attack.scale=10"]
    clean = run_config(load_config(None, base)).metrics["accuracy"]
    mean = run_config(load_config(None, sets)).metrics["accuracy"]
    median = run_config(load_config(None, [*sets, "aggregator.name=median"])).metrics["accuracy"]
    assert mean < 0.5 * clean and median > kept * clean, (clean, mean, median)


def test_a_backdoor_reports_its_success_rate_next_to_clean_accuracy():
    res = run_config(load_config(None, ["rounds=5", "attack.kind=backdoor", "attack.fraction=0.3",
                                        "attack.target=1", "sim.executor=vectorized"]))
    assert 0.0 <= res.metrics["backdoor_success"] <= 1.0 and "accuracy" in res.metrics
    assert all("backdoor_success" in r for r in res.history)


@pytest.mark.parametrize("sets,message", [
    (["attack.kind=sign_flip", "attack.fraction=1.0"], "attack.fraction = 1.0"),
    (["attack.kind=teleport"], "attack.kind"),
    (["attack.kind=backdoor", "attack.target=10", "rounds=1"], "attack.target = 10"),
])
def test_bad_attack_settings_name_the_key(sets, message):
    with pytest.raises(ConfigError, match=message):
        run_config(load_config(None, sets))


def test_simulate_with_an_attack_fleet_and_a_robust_aggregator():
    data, part = blobs(n_train=120), manual_partition([12] * 10)
    attack = AttackOptions("scaled", fraction=0.2, scale=50.0)
    fleet = AttackFleet(build_fleet(data, part, FedAvg(sampler=Sampler(10), aggregator=Median()), small_model,
                                    sim=SimOptions(executor="vectorized")), attack, attack.malicious(range(10)))
    assert fleet.describe() == "vectorized" and len(fleet.clients()) == 10
    assert simulate(small_model, data, part, FedAvg(sampler=Sampler(10)), options(1, 0)).state.round == 1


def test_a_client_process_refuses_attacks_it_cannot_run_alone():
    from fedloop.net.client_process import attacked_reply, client_attack
    from fedloop.types import Update

    with pytest.raises(ConfigError, match="--attack alie: it colludes"):
        client_attack("alie", None, 0)
    with pytest.raises(ConfigError, match="--attack-scale"):
        client_attack("scaled", None, 0)
    flip = client_attack("sign_flip", None, 0)
    sent = attacked_reply(Update(1, 1, dict(U), 5), flip)
    assert torch.equal(sent.params["w"], -U["w"]) and attacked_reply(Update(1, 1, dict(U), 5), None).params is not None
