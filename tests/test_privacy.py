"""Differential privacy: clipping, the server's noise, the accountant against dp-accounting directly, adaptive
clipping, DP-SGD's per-example gradients, the budget stop and its resume, and the configurations refused."""

import json
import logging
import math
import re
from dataclasses import replace

import dp_accounting
import numpy as np
import pytest
import torch
from conftest import assert_close, blobs, manual_partition, options, small_model
from dp_accounting import pld, rdp
from torch.nn import functional as F

from fedloop import FedAvg, Sampler, Scaffold, SimOptions, simulate
from fedloop.build import load_config
from fedloop.cli import main
from fedloop.client import dpsgd
from fedloop.client.training import SGDProgram
from fedloop.errors import ConfigError, PrivacyBudgetExhausted
from fedloop.params import norm
from fedloop.privacy import CentralDP, LocalDP, PrivacyOptions, Release, epsilon, privatize
from fedloop.privacy.accountant import calibrate
from fedloop.transforms import RoundInfo
from fedloop.types import Broadcast, Task, Update

SIZES = [12, 20, 28, 16]


def task(config=None):
    return Task(0, 1, "fit", Broadcast(0, {}), 0, config or {})


def info(updates=(), population=100, expected=10.0, sampling="fixed"):
    return RoundInfo(1, list(updates), population, expected, sampling, SGDProgram())


def test_clipping_bounds_every_update_and_passes_small_ones_unchanged():
    dp = CentralDP(clip=1.5)
    gen = torch.Generator().manual_seed(0)
    for scale in (0.01, 0.5, 3.0, 100.0):
        update = {"a": torch.randn(7, generator=gen) * scale, "b": torch.randn(2, 3, generator=gen) * scale}
        out, metrics = dp.client(task(), dict(update), seed=0)
        if norm(update) <= 1.5:
            assert all(torch.equal(out[k], update[k]) for k in update) and metrics["_clipped"] == 0.0
        else:
            assert norm(out) <= 1.5 + 1e-6 and metrics["_clipped"] == 1.0
            assert torch.allclose(out["a"] / norm(out), update["a"] / norm(update), atol=1e-6)  # direction kept


def test_the_server_rejects_an_update_above_the_clip_norm_the_client_had_to_apply():
    dp = CentralDP(clip=1.0)
    state = dp.init({})
    over = Update(3, 1, {"w": torch.tensor([3.0, 4.0])}, 5, {"_clipped": 1.0})
    assert "exceeds the clip norm 1" in dp.server_update(over, state)
    ok = Update(3, 1, {"w": torch.tensor([0.6, 0.8])}, 5, {"_clipped": 1.0})
    assert dp.server_update(ok, state) is ok


def test_the_servers_noise_on_the_sum_has_the_configured_standard_deviation():
    z, clip, expected = 1.3, 0.7, 8.0
    dp = CentralDP(clip=clip, noise_multiplier=z)
    zero = {"w": torch.zeros(20_000)}
    noised, _, metrics = dp.server_aggregate(zero, dp.init(zero), seed=11, info=info(expected=expected))
    draws = noised["w"].double() * expected  # the noise was added to the sum, then divided by the expected count
    n = draws.numel()
    sd = float(draws.std())
    # the sample standard deviation of n normal draws has standard error sigma / sqrt(2 (n - 1)): allow 5 of them
    assert abs(sd - z * clip) < 5 * z * clip / math.sqrt(2 * (n - 1))
    assert abs(float(draws.mean())) < 5 * z * clip / math.sqrt(n)
    clean = {"w": torch.ones(20_000)}
    other, _, _ = dp.server_aggregate(clean, dp.init(clean), seed=11, info=info(expected=expected))
    assert not torch.allclose(other["w"], clean["w"] / expected) and metrics["epsilon"] > 0


@pytest.mark.parametrize("sampling,q,z,rounds,delta", [
    ("poisson", 0.01, 1.1, 100, 1e-5), ("poisson", 0.1, 0.8, 30, 1e-6), ("fixed", 0.05, 1.0, 50, 1e-5)])
def test_epsilon_equals_a_direct_dp_accounting_computation(sampling, q, z, rounds, delta):
    population = 200
    if sampling == "poisson":
        release = Release(z, "poisson", rate=q, population=population)
        direct = rdp.RdpAccountant()
        direct.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
        plds = pld.PLDAccountant()
        plds.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
        assert epsilon([(release, rounds)], delta, "pld") == pytest.approx(plds.get_epsilon(delta), rel=1e-9)
    else:
        k = round(q * population)
        release = Release(z, "fixed", population=population, sample=k)
        direct = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        direct.compose(dp_accounting.SampledWithoutReplacementDpEvent(
            population, k, dp_accounting.GaussianDpEvent(z / 2)), rounds)
    assert epsilon([(release, rounds)], delta) == pytest.approx(direct.get_epsilon(delta), rel=1e-9)


def test_a_run_reports_epsilon_every_round_as_dp_accounting_composes_it(tmp_path):
    strategy = privatize(FedAvg(sampler=Sampler(2)), PrivacyOptions("central", clip=0.5, noise_multiplier=1.2,
                                                                    sampling="poisson"))
    res = simulate(small_model, blobs(n_train=sum(SIZES)), manual_partition(SIZES), strategy, options(4, 3),
                   sim=SimOptions(executor="sequential"), )
    for r in res.history:
        acc = rdp.RdpAccountant()
        acc.compose(dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(1.2)), r["round"])
        assert r["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert res.summary["epsilon"] == res.history[-1]["epsilon"] and res.summary["delta"] == 1e-5
    assert "_clipped" not in res.history[-1]  # the clipped bits are the server's, never released


@pytest.mark.slow
def test_the_run_stops_before_the_round_that_would_exceed_max_epsilon_and_resumes_the_accountant_exactly(tmp_path):
    args = ["run", "--set", "privacy.mode=central", "--set", "privacy.noise_multiplier=2.0", "--set",
            "privacy.sampling=poisson", "--set", "rounds=30", "--set", "partition.num_clients=8",
            "--set", "strategy.clients_per_round=2", "--set", "client.epochs=1", "--set", "privacy.secure_noise=false",
            "--quiet"]  # seeded noise: the resumed run is compared with the whole one bit for bit
    assert main([*args, "--set", "privacy.max_epsilon=1.5", "--out", str(tmp_path / "capped")]) == 0
    summary = json.loads((tmp_path / "capped" / "summary.json").read_text())
    assert summary["stop_reason"] == "privacy_budget" and summary["epsilon"] <= 1.5
    rows = [json.loads(line) for line in (tmp_path / "capped" / "metrics.jsonl").read_text().splitlines()]
    release = Release(2.0, "poisson", rate=0.25, population=8)
    assert epsilon([(release, len(rows) + 1)], 1e-5) > 1.5 >= rows[-1]["epsilon"]
    # a run stopped half way and resumed reports the same epsilon and params as one that ran through
    short = [a if a != "rounds=30" else "rounds=6" for a in args]
    assert main([*short, "--out", str(tmp_path / "whole")]) == 0
    assert main([*[a if a != "rounds=30" else "rounds=3" for a in args], "--out", str(tmp_path / "half")]) == 0
    assert main(["run", "--resume", str(tmp_path / "half"), "--set", "rounds=6", "--quiet"]) == 0
    whole = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    half = (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epsilon"] for x in whole] == [json.loads(x)["epsilon"] for x in half]
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == (tmp_path / "half" / "model.safetensors"
                                                                          ).read_bytes()


def test_a_resumed_secure_run_continues_the_accountant_exactly_and_draws_fresh_noise(tmp_path):
    args = ["run", "--set", "privacy.mode=central", "--set", "privacy.noise_multiplier=2.0", "--set",
            "privacy.sampling=poisson", "--set", "partition.num_clients=8", "--set", "strategy.clients_per_round=2",
            "--set", "client.epochs=1", "--quiet"]  # secure_noise is the default
    assert main([*args, "--set", "rounds=4", "--out", str(tmp_path / "whole")]) == 0
    assert main([*args, "--set", "rounds=2", "--out", str(tmp_path / "half")]) == 0
    assert main(["run", "--resume", str(tmp_path / "half"), "--set", "rounds=4", "--quiet"]) == 0
    whole, half = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                   for d in ("whole", "half"))
    assert [r["epsilon"] for r in whole] == [r["epsilon"] for r in half] and len(half) == 4
    assert json.loads((tmp_path / "half" / "summary.json").read_text())["secure_noise"] is True
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() != (tmp_path / "half" / "model.safetensors"
                                                                          ).read_bytes()


def test_the_accountant_refuses_to_release_a_round_beyond_the_budget():
    dp = CentralDP(noise_multiplier=0.5, max_epsilon=1.0)
    params = {"w": torch.zeros(3)}
    with pytest.raises(PrivacyBudgetExhausted, match="max_epsilon = 1"):
        dp.server_aggregate(params, dp.init(params), 0, info(population=10, expected=5.0))


def test_adaptive_clipping_follows_the_target_quantile_of_update_norms():
    """Andrew et al.: with norms drawn from a log-normal, the clip norm settles near the target quantile."""
    rng = np.random.default_rng(0)
    for gamma in (0.3, 0.7):
        dp = CentralDP(clip=0.1, noise_multiplier=0.5, clipping="adaptive", target_quantile=gamma, clip_lr=0.2,
                       count_stddev=1.0)
        state, params = dp.init({"w": torch.zeros(1)}), {"w": torch.zeros(1)}
        for _ in range(300):
            norms = rng.lognormal(0.0, 0.5, 100)
            ups = [Update(i, 1, {}, 1, {"_clipped": float(n > float(state["clip"]))}) for i, n in enumerate(norms)]
            _, state, _ = dp.server_aggregate(params, state, int(rng.integers(1 << 30)),
                                              info(ups, population=1000, expected=100.0))
        want = float(np.exp(0.5 * __import__("scipy").stats.norm.ppf(gamma)))
        assert abs(float(state["clip"]) - want) / want < 0.15


def test_adaptive_clipping_spends_part_of_the_noise_on_the_count():
    dp = CentralDP(noise_multiplier=1.0, clipping="adaptive", count_stddev=2.0)
    z_u, sigma_b = dp.update_noise(expected=10.0)
    assert sigma_b == 2.0 and z_u ** -2 + (2 * sigma_b) ** -2 == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="count_stddev") as refused:
        CentralDP(noise_multiplier=5.0, clipping="adaptive", count_stddev=1.0).update_noise(10.0)
    # z = 5 needs sigma_b above z / 2 = 2.5: the advice is to raise the count noise or lower z, never to raise z
    assert "raise privacy.count_stddev above 2.5 or lower the noise multiplier" in str(refused.value)
    assert "raise privacy.count_stddev or the noise multiplier" not in str(refused.value)


def test_dp_sgd_per_example_gradients_equal_a_plain_loop():
    torch.manual_seed(0)
    model = small_model()
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    grads, (losses, _) = dpsgd.per_example_grads(model, F.cross_entropy)(params, x, y)
    for i in range(6):
        model.zero_grad()
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        loss.backward()
        for k, p in model.named_parameters():
            assert torch.allclose(grads[k][i], p.grad, atol=1e-6)
        assert losses[i] == pytest.approx(loss.item(), rel=1e-6)
    summed = dpsgd.clip_and_sum(grads, 0.1, 1)
    by_hand = {k: sum(grads[k][i] * min(1.0, 0.1 / norm({n: grads[n][i] for n in grads})) for i in range(6))
               for k in grads}
    assert_close(summed, by_hand, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("strategy", [FedAvg(sampler=Sampler(3)), Scaffold(sampler=Sampler(3))])
def test_dp_sgd_batched_across_clients_matches_one_client_at_a_time(strategy):
    private = privatize(strategy, PrivacyOptions("dp-sgd", clip=0.5, noise_multiplier=0.8, secure_noise=False))
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    seq = simulate(small_model, data, part, private, options(2, 4), sim=SimOptions(executor="sequential"))
    vec = simulate(small_model, data, part, private, options(2, 4), sim=SimOptions(executor="vectorized"))
    assert vec.summary["executor"] == "vectorized"
    assert_close(seq.state.params, vec.state.params)
    plain = simulate(small_model, data, part, strategy, options(2, 4), sim=SimOptions(executor="sequential"))
    assert not torch.allclose(plain.state.params["0.weight"], seq.state.params["0.weight"])
    assert seq.history[-1]["epsilon"] > 0


def test_local_dp_noises_each_update_on_the_client_and_reports_epsilon_per_round():
    dp = LocalDP(clip=1.0, noise_multiplier=2.0)
    update = {"w": torch.full((10_000,), 5.0)}
    out, _ = dp.client(task(), dict(update), seed=3)
    clipped_value = 5.0 / norm(update)
    assert float((out["w"] - clipped_value).std()) == pytest.approx(2.0, rel=0.05)
    _, state, metrics = dp.server_aggregate({"w": torch.zeros(1)}, dp.init({}), 0, info())
    _, _, second = dp.server_aggregate({"w": torch.zeros(1)}, state, 0, info())
    one = dp_accounting.rdp.RdpAccountant()
    one.compose(dp_accounting.GaussianDpEvent(1.0))
    assert metrics["epsilon_round"] == pytest.approx(one.get_epsilon(1e-5)) == metrics["epsilon"]
    assert second["epsilon"] > metrics["epsilon"]
    tighter = pld.PLDAccountant()
    tighter.compose(dp_accounting.GaussianDpEvent(1.0), 2)  # sensitivity 2C, noise 2C: multiplier 1
    _, _, by_pld = LocalDP(clip=1.0, noise_multiplier=2.0, accountant="pld").server_aggregate(
        {"w": torch.zeros(1)}, state, 0, info())
    assert by_pld["epsilon"] == pytest.approx(tighter.get_epsilon(1e-5), rel=1e-9)
    assert by_pld["epsilon"] < second["epsilon"]  # PLD is tighter than RDP


def test_calibration_finds_the_noise_for_a_target_epsilon():
    release = Release(1.0, "poisson", rate=0.05, population=400)
    z = calibrate(release, 200, 1e-5, 2.0)
    got = epsilon([(Release(z, "poisson", rate=0.05, population=400), 200)], 1e-5)
    assert got <= 2.0 and got == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize("sets,message", [
    (["privacy.mode=central", "privacy.noise_multiplier=1", "privacy.clip=-1"], "privacy.clip = -1"),
    (["privacy.mode=central", "privacy.noise_multiplier=1", "privacy.delta=1"], "privacy.delta = 1"),
    (["privacy.mode=central"], "needs noise_multiplier or target_epsilon"),
    (["privacy.mode=central", "privacy.noise_multiplier=1", "strategy.name=scaffold"], "strategy 'scaffold'"),
    (["privacy.mode=central", "privacy.noise_multiplier=1", "strategy.name=power_of_choice"],
     "strategy 'power_of_choice'"),
    (["privacy.mode=central", "privacy.noise_multiplier=1", "privacy.accountant=pld"], "PLD"),
    (["privacy.mode=local", "privacy.noise_multiplier=1", "privacy.clipping=adaptive"], "privacy.clipping"),
])
def test_bad_privacy_settings_are_config_errors_naming_the_key(sets, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, sets)


def test_an_unreachable_target_epsilon_is_a_clear_error(capsys):
    code = main(["privacy", "--set", "privacy.mode=central", "--epsilon", "0.001"])
    err = capsys.readouterr().err
    assert code == 2 and "privacy.target_epsilon = 0.001 cannot be reached in 40 rounds" in err


@pytest.mark.slow
def test_the_planner_calibrates_and_reports_what_the_run_then_spends(tmp_path, capsys):
    sets = ["--set", "privacy.mode=central", "--set", "privacy.sampling=poisson", "--set", "rounds=5"]
    assert main(["privacy", *sets, "--epsilon", "20"]) == 0
    out = capsys.readouterr().out
    z = float(out.split("noise multiplier ")[2].split()[0])
    spent = float(out.split("5 rounds: ")[1].split()[0])
    assert "epsilon after 1 rounds" in out and 19.9 < spent <= 20.0
    assert main(["run", *sets, "--set", "privacy.target_epsilon=20", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["privacy"]["noise_multiplier"] == pytest.approx(z, rel=1e-3)
    assert summary["epsilon"] <= 20 and summary["epsilon"] == pytest.approx(20, rel=1e-3)


def test_server_side_clipping_and_the_actual_denominator():
    dp = CentralDP(clip=1.0, noise_multiplier=1e-9, where="server", denominator="actual")
    state = dp.init({})
    big = Update(1, 1, {"w": torch.tensor([30.0, 40.0])}, 5)
    clipped = dp.server_update(big, state)
    assert norm(clipped.params) == pytest.approx(1.0) and clipped.metrics["_clipped"] == 1.0
    small = dp.server_update(Update(2, 1, {"w": torch.tensor([0.3, 0.4])}, 5), state)
    assert small.metrics["_clipped"] == 0.0
    total = {"w": clipped.params["w"] + small.params["w"]}
    out, _, _ = dp.server_aggregate(total, state, 0, info([clipped, small], expected=10.0))
    assert torch.allclose(out["w"], total["w"] / 2, atol=1e-6)  # divided by the 2 that replied, not by 10


def test_the_planner_quotes_the_measured_accuracy_nearest_the_planned_epsilon(tmp_path, monkeypatch):
    from fedloop.privacy import planner

    monkeypatch.setattr(planner, "RESULTS", tmp_path)
    cells = [("none", None, 0.84), ("central", 4.0, 0.80), ("central", 4.0, 0.82), ("central", 1.0, 0.70)]
    for i, (mode, eps, acc) in enumerate(cells):
        (tmp_path / f"{i}.json").write_text(json.dumps({
            "dataset": "digits", "mode": mode, "clipping": "fixed", "epsilon_target": eps, "accuracy": acc,
            "clients": 2000, "rounds": 200}))
    line = planner._cost("digits", PrivacyOptions("central", noise_multiplier=1.0), 3.2)
    assert "accuracy 0.8100 at epsilon 4 vs 0.8400 without privacy" in line and "mean of 2 runs" in line
    assert "not measured" in planner._cost("cifar10", PrivacyOptions("central", noise_multiplier=1.0), 3.2)


def test_the_planner_says_how_loud_the_noise_is_and_warns_when_it_drowns_the_signal(capsys):
    from fedloop.privacy.planner import LEARNS_AT

    central = ["privacy", "--set", "privacy.mode=central", "--set", "privacy.sampling=poisson"]
    assert main([*central, "--epsilon", "4"]) == 0  # the default MLP, 10 of 20 clients a round
    out = capsys.readouterr().out
    ratio = float(re.search(r"noise-to-signal of the released mean: ([\d.]+)", out).group(1))
    assert ratio == pytest.approx(3.8416 * math.sqrt(55_210) / 10, rel=1e-3)
    need = int(re.search(r"About ([\d,]+) clients per round", out).group(1).replace(",", ""))
    assert need == math.ceil(ratio / LEARNS_AT * 10)
    small = [*central, "--set", "model.name=logreg", "--set", "partition.num_clients=200", "--set",
             "strategy.clients_per_round=50"]
    assert main([*small, "--epsilon", "4"]) == 0
    out = capsys.readouterr().out
    assert "noise-to-signal of the released mean: 1.09" in out and "warning" not in out
    assert main(["privacy", "--set", "privacy.mode=local", "--noise", "1.0"]) == 0
    ratio = float(re.search(r"noise-to-signal of the released mean: ([\d.]+)", capsys.readouterr().out).group(1))
    assert ratio == pytest.approx(math.sqrt(55_210) / math.sqrt(10), rel=1e-3)  # m noises average down by sqrt(m)


def test_the_planners_threshold_is_the_loudest_measured_cell_that_still_learns():
    """LEARNS_AT is read off benchmarks/privacy.py's cells: Fashion-MNIST softmax regression (784 x 10 + 10
    params), Poisson with 100 expected clients a round; every private cell beat 0.7 (chance is 0.1)."""
    from fedloop.privacy.planner import LEARNS_AT, RESULTS

    cells = [json.loads(p.read_text()) for p in RESULTS.glob("*.json")]
    private = [c for c in cells if c["mode"] != "none"]
    assert private and all(c["accuracy"] > 0.7 for c in private)
    loudest = max(c["noise_multiplier"] * math.sqrt(7850) / c["per_round"] for c in private)
    assert LEARNS_AT == pytest.approx(loudest, abs=0.05)


SECURE_CASES = {
    "local": PrivacyOptions("local", clip=0.05, noise_multiplier=0.5),
    "dp-sgd": PrivacyOptions("dp-sgd", clip=0.5, noise_multiplier=0.7),
    "central": PrivacyOptions("central", clip=0.05, noise_multiplier=0.5, sampling="poisson"),
}


@pytest.mark.parametrize("mode", list(SECURE_CASES))
def test_secret_noise_makes_same_seed_runs_differ_and_the_research_setting_repeats_them(mode, caplog):
    """Same seed, same machine: with secure noise (the default) two runs give different models, since no one can
    redraw the noise; with secure_noise = false they give the same bits, and the summary says which it was."""
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)

    def run(secure: bool):
        strategy = privatize(FedAvg(sampler=Sampler(4)), replace(SECURE_CASES[mode], secure_noise=secure))
        return simulate(small_model, data, part, strategy, options(2, 5), sim=SimOptions(executor="sequential"))

    a, b = run(True), run(True)
    assert not torch.equal(a.state.params["0.weight"], b.state.params["0.weight"])
    assert a.summary["secure_noise"] is True and a.summary["privacy"]["secure_noise"] is True
    assert [r["epsilon"] for r in a.history] == [r["epsilon"] for r in b.history]  # the same mechanism, accounted
    with caplog.at_level(logging.WARNING, logger="fedloop.run"):
        c, d = run(False), run(False)
    assert all(torch.equal(c.state.params[k], d.state.params[k]) for k in c.state.params)
    assert c.summary["secure_noise"] is False
    assert "NOT private against the server or anyone who has the seed" in caplog.text


def test_central_dp_clients_are_sampled_from_the_servers_secret_stream():
    """Who took part is not a function of the config's seed: two same-seed runs ask different clients."""
    data, part = blobs(n_train=20 * 6), manual_partition([6] * 20)

    def selected(secure: bool) -> list[list[int]]:
        strategy = privatize(FedAvg(sampler=Sampler(5)), PrivacyOptions("central", clip=0.05, noise_multiplier=0.5,
                                                                         sampling="poisson", secure_noise=secure))
        res = simulate(small_model, data, part, strategy, options(4, 5), sim=SimOptions(executor="sequential"))
        return [r["selected"] for r in res.history]

    assert selected(True) != selected(True)
    assert selected(False) == selected(False)


def test_dp_sgd_batches_and_noise_are_not_a_function_of_the_task_seed():
    secure = SGDProgram(batch_size=4, clip=0.5, noise_multiplier=1.0)
    first, second = dpsgd.sources(secure, 123), dpsgd.sources(secure, 123)
    assert [b.tolist() for b in dpsgd.batches(first[0], 50, 4, 10, False)] != \
        [b.tolist() for b in dpsgd.batches(second[0], 50, 4, 10, False)]
    assert not torch.equal(first[1].gaussian((8,)), second[1].gaussian((8,)))
    seeded = replace(secure, secure_noise=False)
    again = [dpsgd.sources(seeded, 123) for _ in range(2)]
    assert [b.tolist() for b in dpsgd.batches(again[0][0], 50, 4, 10, False)] == \
        [b.tolist() for b in dpsgd.batches(again[1][0], 50, 4, 10, False)]
