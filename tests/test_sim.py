"""Executors and populations: every executor gives the sequential reference's result for every strategy, and
everything after training goes through the client app whatever the executor."""

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, replace

import pytest
import torch
from conftest import assert_close, assert_equal, blobs, first_to_create, manual_partition, run_sizes, small_model
from torch import nn
from torch.nn import functional as F

from fedloop import (
    SGD,
    Adam,
    ClientApp,
    Clip,
    ConfigError,
    Ditto,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedBuff,
    FedDyn,
    FedNova,
    FedProx,
    FedSGD,
    FedYogi,
    LocalSGD,
    PowerOfChoice,
    QFedAvg,
    Sampler,
    Scaffold,
    SimOptions,
    WeightedMean,
)
from fedloop.client import DiskStates, RoundStates, Trained, train_program
from fedloop.data.examples import Examples
from fedloop.data.gaussian import GaussianTeacher
from fedloop.experiment import build_fleet
from fedloop.fleet import run as exchange
from fedloop.loop import run_loop
from fedloop.privacy import PrivacyOptions, privatize
from fedloop.run import initial_params
from fedloop.sampling import round_rng
from fedloop.sim import LazyPopulation, LocalFleet, gaussian_population, vectorized
from fedloop.sim.auto import choose_executor
from fedloop.sim.executors import Job, Vectorized
from fedloop.stops import MaxRounds
from fedloop.types import Broadcast, Task, Update

SIZES = [5, 13, 30, 2, 17, 9]  # unequal, and most are not multiples of the batch size


class CountingFedAvg(FedAvg):
    """FedAvg whose clients count their participations in their persistent state and report the count."""

    def client_finish(self, task, trained, state):
        update, _ = super().client_finish(task, trained, state)
        count = state.get("rounds", torch.zeros(())) + 1
        return replace(update, metrics={**update.metrics, "participations": float(count)}), {"rounds": count}


@dataclass(frozen=True)
class OwnTrainingFedAvg(FedAvg):
    """FedAvg whose clients train with their own loop (plain torch.optim.SGD, full batch): not batchable."""

    def client_train(self, task, ctx):
        ctx.model.load_state_dict(dict(task.params))
        opt = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
        x, y = ctx.train.x[ctx.train.index], ctx.train.y[ctx.train.index]
        opt.zero_grad()
        ctx.loss_fn(ctx.model(x), y).backward()
        opt.step()
        local = dict(ctx.model.state_dict())
        return Trained({k: task.params[k] - local[k] for k in task.params}, len(y), 1, {})


LOCAL = LocalSGD(epochs=2, batch_size=4, lr=0.1)
CONFORMANCE = {
    "fedavg": FedAvg(sampler=Sampler(4), local=LOCAL),
    "fedavg-momentum-wd": FedAvg(sampler=Sampler(None), local=LocalSGD(epochs=3, batch_size=3, lr=0.05,
                                                                       momentum=0.9, weight_decay=1e-3)),
    "fedavg-full-batch": FedAvg(sampler=Sampler(None), aggregator=WeightedMean("uniform"),
                                local=LocalSGD(epochs=2, batch_size="full", lr=0.2)),
    "fedsgd": FedSGD(sampler=Sampler(None), server_opt=SGD(0.5)),
    "fedprox": FedProx(mu=0.5, sampler=Sampler(5), server_opt=SGD(momentum=0.5),
                       local=LocalSGD(epochs=2, batch_size=5, lr=0.1)),
    "scaffold": Scaffold(sampler=Sampler(4), local=LOCAL),
    "fedavgm": FedAvgM(sampler=Sampler(4), local=LOCAL),
    "fedadam": FedAdam(sampler=Sampler(4), local=LOCAL),
    "fedyogi": FedYogi(sampler=Sampler(4), local=LOCAL),
    "fedadagrad": FedAdagrad(sampler=Sampler(4), local=LOCAL),
    "fednova": FedNova(sampler=Sampler(4), local=replace(LOCAL, momentum=0.9)),
    "fednova-prox": FedNova(sampler=Sampler(4), local=LOCAL, mu=0.5),
    "feddyn": FedDyn(sampler=Sampler(4), local=LOCAL, alpha=0.1),
    "qfedavg": QFedAvg(sampler=Sampler(4), local=LOCAL, q=2.0),
    "ditto": Ditto(sampler=Sampler(4), local=LOCAL, lam=0.3),
    "power_of_choice": PowerOfChoice(sampler=Sampler(3), candidates=5, local=LOCAL),
    "fedbuff": FedBuff(sampler=Sampler(4), local=LOCAL, concurrency=5, buffer_size=2),
    "fedavg-over-selection": FedAvg(sampler=Sampler(3, over_selection=0.5), local=LOCAL),
    "clip-client": FedAvg(sampler=Sampler(4), local=LOCAL, transforms=(Clip(0.05, "client"),)),
    "clip-server": FedAvg(sampler=Sampler(4), local=LOCAL, transforms=(Clip(0.05, "server"),)),
    "custom-client-half": CountingFedAvg(sampler=Sampler(4), local=LOCAL, transforms=(Clip(0.05),)),
    "own-training": OwnTrainingFedAvg(sampler=Sampler(4)),
    # DP in the research setting (seeded noise): executors are compared bit for bit, so the noise must be redrawable
    "central-dp-adaptive": privatize(FedAvg(sampler=Sampler(4), local=LOCAL), PrivacyOptions(
        "central", clip=0.05, clipping="adaptive", noise_multiplier=0.5, count_stddev=1.0, sampling="poisson",
        secure_noise=False)),
    "local-dp": privatize(FedAvg(sampler=Sampler(4), local=LOCAL), PrivacyOptions(
        "local", clip=0.05, noise_multiplier=0.5, secure_noise=False)),
    "dp-sgd": privatize(FedProx(mu=0.1, sampler=Sampler(4), local=LOCAL), PrivacyOptions(
        "dp-sgd", clip=0.5, noise_multiplier=0.7, secure_noise=False)),
}
EXECUTORS = ["vectorized", "processes", "processes-vectorized", "auto"]


def run(strategy, executor, **kw):
    return run_sizes(strategy, SIZES, executor, **kw)


@pytest.fixture(scope="module")
def reference():
    return {name: run(s, "sequential") for name, s in CONFORMANCE.items()}


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("strategy", list(CONFORMANCE))
def test_every_executor_gives_the_sequential_result(reference, strategy, executor):
    assert_same_run(run(CONFORMANCE[strategy], executor), reference[strategy])


def dense_model() -> nn.Module:
    """A model that the vectorized executor differentiates in closed form (sim/dense.py)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


NOT_BATCHED = {**dict.fromkeys(["own-training", "qfedavg", "ditto"], "a strategy with its own client half trains "
                                                                     "sequentially"),
               "dp-sgd": "DP-SGD's per-example gradients go through autograd"}


@pytest.mark.parametrize("strategy", list(CONFORMANCE))
def test_a_dense_model_trained_by_closed_form_gradients_gives_the_sequential_result(monkeypatch, strategy):
    calls = []
    closed_form = vectorized.loss_grads
    monkeypatch.setattr(vectorized, "loss_grads", lambda *a: calls.append(1) or closed_form(*a))
    res = run(CONFORMANCE[strategy], "vectorized", model=dense_model)
    assert bool(calls) == (strategy not in NOT_BATCHED)
    assert_same_run(res, run(CONFORMANCE[strategy], "sequential", model=dense_model))


def wide(activation: type[nn.Module]) -> nn.Module:
    """180,003 params: at 4 rows a step, over the autograd bound of `auto` and under the closed-form one."""
    return nn.Sequential(nn.Flatten(), nn.Linear(5, 20_000), activation(), nn.Linear(20_000, 3))


@pytest.mark.parametrize(("activation", "chosen", "why"), [
    (nn.ReLU, "vectorized", "180,003 params x 4 rows per step <= 1,000,000; a dense model, differentiated in closed "
                            "form"),
    (nn.Tanh, "processes", "180,003 params x 4 rows per step > 400,000; 2 cores, 4 clients per round")])
def test_auto_batches_larger_steps_of_a_dense_model_than_of_others(activation, chosen, why):
    data = blobs(n_train=20)
    app = ClientApp(0, FedAvg(sampler=Sampler(4), local=LOCAL), lambda: wide(activation), F.cross_entropy,
                    train=Examples.all(data.x_train, data.y_train))
    assert choose_executor(app, per_round=4, workers=2) == (chosen, why)


def assert_same_run(res, ref):
    assert_close(res.state.params, ref.state.params)
    assert_close(res.state.extras, ref.state.extras)  # SCAFFOLD's control variate: client state was kept
    assert_close(res.state.opt_state, ref.state.opt_state)
    for got, want in zip(res.history, ref.history, strict=True):
        assert got["selected"] == want["selected"]
        for key in ("train_loss", "update_norm", "clipped", "participations"):
            assert (key in got) == (key in want), key  # a strategy either reports a metric under every executor or not
            if want.get(key) is None:  # absent, or recorded as not measured (a strategy's own training reports none)
                assert got.get(key) is None, key
            else:
                assert got[key] == pytest.approx(want[key], rel=1e-5), key


def client_apps(strategy, data=None):
    data = data if data is not None else blobs(n_train=sum(SIZES))
    part = manual_partition(SIZES)
    return [ClientApp(c, strategy, small_model, F.cross_entropy,
                      train=Examples(data.x_train, data.y_train, torch.as_tensor(part.train[c])))
            for c in range(len(SIZES))]


@pytest.mark.parametrize("executor", ["sequential", *EXECUTORS])
def test_a_custom_client_half_and_a_client_transform_give_the_same_updates_and_state_everywhere(executor):
    """The client half runs through ClientApp.finish under every executor: the strategy's own client_finish (a
    participation count kept as client state) and client-side clipping apply to every update, and a retried round
    starts from the state the client had before it."""
    strategy = CONFORMANCE["custom-client-half"]
    fleet = LocalFleet(client_apps(strategy), executor)
    state = strategy.init(initial_params(small_model, 0), 0)
    tasks = strategy.configure(state, fleet.clients())
    first = exchange(fleet, tasks)
    again = exchange(fleet, tasks)  # the same round again (a retry): the clients start from their state before it
    later = exchange(fleet, strategy.configure(replace(state, round=1), fleet.clients()))
    fleet.close()
    fresh = client_apps(strategy)
    reference = [fresh[t.client_id].handle(t) for t in tasks]  # one client at a time, without any executor
    for got, retry, want in zip(first, again, reference, strict=True):
        assert isinstance(got, Update) and isinstance(want, Update)
        assert got.metrics["participations"] == retry.metrics["participations"] == 1.0
        assert got.metrics["clipped"] == want.metrics["clipped"] == 1.0  # the clip transform ran
        assert sum(float(v.square().sum()) for v in got.params.values()) == pytest.approx(0.05 ** 2, rel=1e-4)
        assert_close(got.params, want.params)
        assert_equal(got.params, retry.params)
    twice = {u.client_id for u in later} & {t.client_id for t in tasks}
    assert all(u.metrics["participations"] == (2.0 if u.client_id in twice else 1.0) for u in later)
    for c in {t.client_id for t in tasks}:
        assert int(fleet.states.latest(c)["rounds"]) == (2 if c in twice else 1)


def test_a_strategy_with_its_own_client_training_runs_sequentially_under_vectorized_with_one_log_line(caplog):
    strategy = CONFORMANCE["own-training"]
    with caplog.at_level(logging.INFO, logger="fedloop.sim"):
        res = run(strategy, "vectorized")
    lines = [r.message for r in caplog.records if "running these clients sequentially" in r.message]
    assert len(lines) == 1 and "trains its clients with its own client_train" in lines[0]
    assert res.summary["executor"] == "vectorized (ran sequentially because " + lines[0].split(" because ", 1)[1] + ")"
    assert_equal(res.state.params, run(strategy, "sequential").state.params)
    assert run(CONFORMANCE["scaffold"], "vectorized").summary["executor"] == "vectorized"


def test_vectorized_trains_the_group_as_one_batch_and_reports_train_accuracy():
    """The vectorized path must really batch (not fall back) and report the same metrics."""
    strategy = CONFORMANCE["fedavg"]
    fleet = build_fleet(blobs(n_train=sum(SIZES)), manual_partition(SIZES), strategy, small_model,
                        sim=SimOptions(executor="vectorized"))
    state = strategy.init(initial_params(small_model, 0), 0)
    tasks = strategy.configure(state, fleet.clients())
    replies = exchange(fleet, tasks)
    assert list(fleet.executor._reasons.values()) == [None]
    seq = build_fleet(blobs(n_train=sum(SIZES)), manual_partition(SIZES), strategy, small_model)
    for v, s in zip(replies, exchange(seq, tasks), strict=True):
        assert isinstance(v, Update) and v.client_id == s.client_id and v.num_examples == s.num_examples
        assert v.metrics.keys() == s.metrics.keys() == {"train_loss", "train_accuracy"}
        assert v.metrics["train_accuracy"] == pytest.approx(s.metrics["train_accuracy"])
        assert_close(v.params, s.params)


def test_scaffold_trains_as_one_batch():
    strategy = CONFORMANCE["scaffold"]
    fleet = build_fleet(blobs(n_train=sum(SIZES)), manual_partition(SIZES), strategy, small_model,
                        sim=SimOptions(executor="vectorized"))
    state = strategy.init(initial_params(small_model, 0), 0)
    exchange(fleet, strategy.configure(state, fleet.clients()))
    assert list(fleet.executor._reasons.values()) == [None]


def test_the_one_sgd_step_is_torch_optim_sgd():
    """The functional SGD both paths use gives torch.optim.SGD's bits (momentum, weight decay)."""
    data = blobs(n_train=30)
    app = ClientApp(0, FedAvg(), small_model, F.cross_entropy, train=Examples.all(data.x_train, data.y_train))
    params = initial_params(small_model, 3)
    program = LocalSGD(epochs=2, batch_size=7, lr=0.1, momentum=0.9, weight_decay=0.01).program()
    task = Task(0, 1, "fit", Broadcast(0, params), seed=11)
    from fedloop.client import ClientContext

    trained = train_program(program, task, ClientContext(small_model(), app.train, F.cross_entropy))
    model = small_model()
    model.load_state_dict(params)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(11)
    for _ in range(2):
        for xb, yb in app.train.batches(7, gen):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    assert trained.steps == 10
    assert_equal(trained.update, {k: params[k] - v.detach() for k, v in model.state_dict().items()})


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


def label_smoothed(out, y):
    return F.cross_entropy(out, y, label_smoothing=0.1)


def class_weighted(out, y):  # a weighted mean is not the mean of per-example losses
    return F.cross_entropy(out, y, weight=torch.tensor([1.0, 5.0, 0.2]))


@pytest.mark.parametrize("model,loss,why", [
    (WithBatchNorm, F.cross_entropy, "buffers"),
    (lambda: nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.2), nn.Linear(8, 3)), F.cross_entropy, "dropout"),
    (small_model, class_weighted, "not the mean of per-example losses"),
])
def test_unbatchable_models_and_losses_fall_back_to_sequential_with_one_log_line(caplog, model, loss, why):
    strategy = FedAvg(sampler=Sampler(None), local=LocalSGD(epochs=1, batch_size=4))
    with caplog.at_level(logging.INFO, logger="fedloop.sim"):
        res = run(strategy, "vectorized", rounds=2, model=model, loss=loss)
    lines = [r.message for r in caplog.records if "running these clients sequentially" in r.message]
    assert len(lines) == 1 and why in lines[0]
    ref = run(strategy, "sequential", rounds=2, model=model, loss=loss)
    assert_equal(res.state.params, ref.state.params)


def test_a_per_example_loss_other_than_cross_entropy_is_batched_exactly():
    strategy = CONFORMANCE["fedavg"]
    res = run(strategy, "vectorized", loss=label_smoothed)
    assert_close(res.state.params, run(strategy, "sequential", loss=label_smoothed).state.params)


def test_a_client_whose_code_fails_is_a_failure_under_every_executor():
    class Fragile(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x):
            if bool((x == 99.0).any()):  # only the 2-example client's data hold this value
                raise RuntimeError("simulated client crash")
            return self.lin(x)

    data = blobs(n_train=sum(SIZES))
    data.x_train[48:50] = 99.0
    strategy = FedAvg(sampler=Sampler(None), local=LocalSGD(epochs=1, batch_size="full"))
    for executor in ("sequential", *EXECUTORS):
        res = run(strategy, executor, rounds=2, model=Fragile, data=data)
        assert [(h["clients"], h["failures"]) for h in res.history] == [(5, 1), (5, 1)], executor
        assert "simulated client crash" in res.history[0]["failed_clients"][0]["reason"]


PARENT = os.getpid()


class Killer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x):
        if x.shape[0] == 2 and torch.get_num_threads() == 1 and os.getpid() != PARENT:
            os._exit(3)  # the worker process dies mid-round (only in a worker, only for one client)
        return self.lin(x)


def test_a_client_that_kills_its_worker_every_time_fails_alone_and_the_others_train():
    strategy = FedAvg(sampler=Sampler(None), local=LocalSGD(epochs=1, batch_size="full"))
    res = run(strategy, "processes", rounds=2, model=Killer)
    assert res.state.round == 2
    for h in res.history:
        assert h["clients"] == len(SIZES) - 1 and [f["client"] for f in h["failed_clients"]] == [3]
        assert "a worker process died, each of the 2 times it ran this client" in h["failed_clients"][0]["reason"]
        assert any("run client by client" in i for i in h["incidents"])


KILL_ONCE: list[str] = []  # a marker file's path, set by the test before the pool forks


class KilledOnce(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x):
        if x.shape[0] == 2 and os.getpid() != PARENT and KILL_ONCE and first_to_create(KILL_ONCE[0]):
            os._exit(9)  # as if the worker were killed from outside, once
        return self.lin(x)


@pytest.mark.parametrize("executor", ["processes", "processes-vectorized"])
def test_a_worker_killed_mid_round_changes_no_bit_its_share_is_run_again(tmp_path, executor):
    strategy = FedAvg(sampler=Sampler(None), local=LocalSGD(epochs=1, batch_size="full"))
    clean = run(strategy, executor, rounds=2, model=KilledOnce)
    KILL_ONCE[:] = [str(tmp_path / "killed")]
    try:
        hit = run(strategy, executor, rounds=2, model=KilledOnce)
    finally:
        KILL_ONCE.clear()
    assert (tmp_path / "killed").exists()
    assert_equal(hit.state.params, clean.state.params)
    first = hit.history[0]
    assert first["failures"] == 0 and first["clients"] == len(SIZES)
    # the dead worker breaks the pool: the other share is run again too, unless it was done already
    assert 1 <= len(first["incidents"]) <= 2
    assert all("a worker process died; its share (clients" in i and "was run again" in i for i in first["incidents"])
    assert "incidents" not in hit.history[1]


class Sleepy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x):
        if x.shape[0] == 2 and os.getpid() != PARENT:
            import time

            time.sleep(30)  # one client's worker hangs
        return self.lin(x)


def test_a_share_that_misses_the_round_deadline_becomes_failures_and_its_worker_is_stopped():
    from fedloop import RoundPolicy

    strategy = FedAvg(sampler=Sampler(None), local=LocalSGD(epochs=1, batch_size="full"))
    res = run(strategy, "processes", rounds=2, model=Sleepy, policy=RoundPolicy(round_deadline=3.0))
    assert res.state.round == 2 and res.history[-1]["seconds"] < 20
    for h in res.history:
        assert h["failures"] >= 1 and h["clients"] + h["failures"] == len(SIZES)
        assert all("deadline" in f["reason"] for f in h["failed_clients"])


@pytest.mark.parametrize("executor", ["sequential", "processes", "vectorized"])
def test_client_state_persists_on_disk_for_a_lazy_population(tmp_path, executor):
    strategy = CountingFedAvg(sampler=Sampler(3), local=LocalSGD(epochs=1, batch_size=5))
    teacher = GaussianTeacher(dim=5, num_classes=3, seed=1)
    pop = gaussian_population(20, (4, 12), strategy, small_model, F.cross_entropy, teacher=teacher, seed=2)
    fleet = LocalFleet(pop, executor, DiskStates(tmp_path))
    state = strategy.init(initial_params(small_model, 0), 0)
    run_loop(strategy, fleet, state, [MaxRounds(4)], federated_eval=False)
    fleet.close()
    chosen = [c.client_id for r in range(1, 5) for c in strategy.sampler.select(pop.clients(), round_rng(0, r))]
    files = sorted(tmp_path.glob("client_*.safetensors"))
    assert len(files) == len(set(chosen))
    store = RoundStates(DiskStates(tmp_path))
    for cid in set(chosen):
        assert int(store.latest(cid)["rounds"]) == chosen.count(cid)


def test_a_lazy_population_builds_only_the_sampled_clients_and_regenerates_the_same_data():
    teacher = GaussianTeacher(dim=5, num_classes=3, seed=1)
    strategy = FedAvg(sampler=Sampler(10), local=LocalSGD(epochs=1, batch_size=10))
    pop = gaussian_population(1_000_000, 50, strategy, small_model, F.cross_entropy, teacher=teacher, seed=0)
    built = []
    counting = LazyPopulation(pop.sizes, lambda cid: built.append(cid) or pop.make_app(cid))
    fleet = LocalFleet(counting, "vectorized")
    state = strategy.init(initial_params(small_model, 0), 0)
    result = run_loop(strategy, fleet, state, [MaxRounds(2)], federated_eval=False)
    assert len(built) == 20 and result.state.round == 2
    a, b = pop.app(123_456).train, pop.app(123_456).train
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and len(a) == 50
    assert not torch.equal(a.x, pop.app(123_457).train.x)


def test_vectorized_handles_clients_holding_separate_arrays():
    """Clients built on their own (not views of one array) are gathered into one batch exactly."""
    strategy = CONFORMANCE["fedavg-momentum-wd"]
    data = blobs(n_train=sum(SIZES))
    part = manual_partition(SIZES)
    apps = [ClientApp(c, strategy, small_model, F.cross_entropy,
                      train=Examples.all(data.x_train[part.train[c]].clone(), data.y_train[part.train[c]].clone()))
            for c in range(len(SIZES))]
    state = strategy.init(initial_params(small_model, 0), 0)
    tasks = strategy.configure(state, [a.info() for a in apps])
    fast = Vectorized().run([Job(apps[t.client_id], t, {}) for t in tasks])
    slow = [apps[t.client_id].fit(t, {}) for t in tasks]
    for f, s in zip(fast, slow, strict=True):
        assert_close(f.update, s.update)


def test_an_unknown_client_in_a_task_is_a_clear_error():
    fleet = build_fleet(blobs(n_train=sum(SIZES)), manual_partition(SIZES), FedAvg(), small_model)
    with pytest.raises(ConfigError, match="client 99, which is not in this fleet"):
        exchange(fleet, [Task(99, 1, "fit", Broadcast(0, initial_params(small_model, 0)), 0)])


def test_a_fleet_refuses_two_apps_with_one_client_id():
    data = blobs(n_train=10)
    apps = [ClientApp(3, FedAvg(), small_model, F.cross_entropy,
                      train=Examples.all(data.x_train, data.y_train))] * 2
    with pytest.raises(ConfigError, match="client ids in a fleet must be unique"):
        LocalFleet(apps)


def test_run_options_and_adam_run_end_to_end_with_the_api():
    res = run_sizes(FedAdam(sampler=Sampler(3), server_opt=Adam(lr=0.05)), SIZES, rounds=4)
    assert res.state.round == 4 and res.history[-1]["accuracy"] > 0
    assert {k.split("/")[0] for k in res.state.opt_state} == {"m", "v"}


RETAINED = """
import sys, torch
from fedloop.memory import return_freed_memory
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
torch.empty(3 << 20).fill_(1.0)  # a 12 MiB block, mapped and unmapped: glibc's threshold rises to 12 MiB
blocks = [torch.empty(1 << 21).fill_(1.0) for _ in range(8)]  # so these 64 MiB come from the heap
above = torch.empty(1 << 14).fill_(1.0)  # a live block above them, so that freeing them leaves a hole
del blocks
before = rss()
if sys.argv[1] == "trim":
    return_freed_memory()
print(before - rss())
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (memory.py)")
def test_freed_heap_memory_goes_back_to_the_system():
    """64 MiB freed inside glibc's heap stay in the process until memory.return_freed_memory, which load_dataset
    calls after decoding and the processes executor after a round with large results (benchmarks/engine.py W1's
    process-tree PSS)."""
    back = {how: int(subprocess.run([sys.executable, "-c", RETAINED, how], capture_output=True, text=True,
                                    check=True).stdout) for how in ("keep", "trim")}
    assert back["keep"] < 4 << 20, back  # the control: without the call the hole stays resident
    assert back["trim"] >= 12 << 20, back  # at least two of the blocks (where glibc grew its heap by mmap, the
    # blocks are in several pieces, and measured here 16 of the 64 MiB came back; in one piece, all 64)
