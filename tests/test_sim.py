"""Executors and populations: every executor gives the sequential reference's result for every strategy."""

import logging
import os

import pytest
import torch
from conftest import blobs, manual_partition
from torch import nn
from torch.nn import functional as F

from fedloop import ConfigError, FedAvg, FedProx, FedSGD, LocalSGD, Scaffold, simulate
from fedloop.client import ClientApp
from fedloop.data.examples import Examples
from fedloop.data.gaussian import GaussianTeacher
from fedloop.experiment import build_fleet, initial_params
from fedloop.local import ClientContext
from fedloop.loop import StopRule, run_loop
from fedloop.sim import DiskStates, LazyPopulation, LocalFleet, gaussian_population
from fedloop.sim.executors import Vectorized
from fedloop.strategies.base import round_rng
from fedloop.types import Task, Update

SIZES = [5, 13, 30, 2, 17, 9]  # unequal, and most are not multiples of the batch size
RTOL, ATOL = 1e-5, 1e-6  # params near zero differ by float32 rounding of a different summation order

CONFORMANCE = {
    "fedavg": FedAvg(clients_per_round=4, local=LocalSGD(epochs=2, batch_size=4, lr=0.1)),
    "fedavg-momentum-wd": FedAvg(clients_per_round=None, local=LocalSGD(epochs=3, batch_size=3, lr=0.05,
                                                                        momentum=0.9, weight_decay=1e-3)),
    "fedavg-full-batch": FedAvg(clients_per_round=None, weighting="uniform",
                                local=LocalSGD(epochs=2, batch_size=None, lr=0.2)),
    "fedsgd": FedSGD(clients_per_round=None, server_lr=0.5),
    "fedprox": FedProx(mu=0.5, clients_per_round=5, server_momentum=0.5,
                       local=LocalSGD(epochs=2, batch_size=5, lr=0.1)),
    "scaffold": Scaffold(clients_per_round=4, local=LocalSGD(epochs=2, batch_size=4, lr=0.1)),
}
EXECUTORS = ["vectorized", "processes", "processes-vectorized", "auto"]


def model_fn() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def run(strategy, executor, rounds=3, model=model_fn, loss=F.cross_entropy, engine="local", data=None, **kw):
    data = data if data is not None else blobs(n_train=sum(SIZES))
    return simulate(model, data, manual_partition(SIZES), strategy, rounds=rounds, seed=5, loss_fn=loss,
                    federated_eval=False, executor=executor, engine=engine, **kw)


def assert_close(a, b):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def reference():
    return {name: run(s, "sequential") for name, s in CONFORMANCE.items()}


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("strategy", list(CONFORMANCE))
def test_every_executor_gives_the_sequential_result(reference, strategy, executor):
    res = run(CONFORMANCE[strategy], executor)
    ref = reference[strategy]
    assert_close(res.state.params, ref.state.params)
    assert_close(res.state.extras, ref.state.extras)  # SCAFFOLD's control variate: client state was kept
    assert res.history[-1]["train_loss"] == pytest.approx(ref.history[-1]["train_loss"], rel=1e-5)


def test_vectorized_trains_the_group_as_one_batch_and_reports_train_accuracy():
    """The vectorized path must really batch (not fall back) and report the same metrics."""
    strategy = CONFORMANCE["fedavg"]
    fleet = build_fleet(blobs(n_train=sum(SIZES)), manual_partition(SIZES), strategy, model_fn, F.cross_entropy,
                        executor="vectorized")
    state = strategy.init(initial_params(model_fn, 0), 0)
    tasks = strategy.configure(state, fleet.clients())
    replies = fleet.run(tasks)
    assert list(fleet.executor._reasons.values()) == [None]
    seq = build_fleet(blobs(n_train=sum(SIZES)), manual_partition(SIZES), strategy, model_fn, F.cross_entropy)
    for v, s in zip(replies, seq.run(tasks), strict=True):
        assert isinstance(v, Update) and v.client_id == s.client_id and v.num_examples == s.num_examples
        assert v.metrics.keys() == s.metrics.keys() == {"train_loss", "train_accuracy"}
        assert v.metrics["train_accuracy"] == pytest.approx(s.metrics["train_accuracy"])
        assert_close(v.params, s.params)


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
    (model_fn, class_weighted, "not the mean of per-example losses"),
])
def test_unbatchable_models_and_losses_fall_back_to_sequential_with_one_log_line(caplog, model, loss, why):
    strategy = FedAvg(clients_per_round=None, local=LocalSGD(epochs=1, batch_size=4))
    with caplog.at_level(logging.INFO, logger="fedloop.sim"):
        res = run(strategy, "vectorized", rounds=2, model=model, loss=loss)
    lines = [r.message for r in caplog.records if "running these clients sequentially" in r.message]
    assert len(lines) == 1 and why in lines[0]
    ref = run(strategy, "sequential", rounds=2, model=model, loss=loss)
    assert all(torch.equal(res.state.params[k], ref.state.params[k]) for k in ref.state.params)


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
    strategy = FedAvg(clients_per_round=None, local=LocalSGD(epochs=1, batch_size=None))
    for executor in ("sequential", *EXECUTORS):
        res = run(strategy, executor, rounds=2, model=Fragile, data=data)
        assert [(h["clients"], h["failures"]) for h in res.history] == [(5, 1), (5, 1)], executor


def test_a_worker_process_that_dies_becomes_failures_and_the_next_round_runs():
    class Killer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x):
            if x.shape[0] == 2 and torch.get_num_threads() == 1 and os.getpid() != PARENT:
                os._exit(3)  # the worker process dies mid-round (only in a worker, only for one client)
            return self.lin(x)

    strategy = FedAvg(clients_per_round=None, local=LocalSGD(epochs=1, batch_size=None))
    res = run(strategy, "processes", rounds=2, model=Killer)
    assert res.state.round == 2
    for h in res.history:
        assert h["failures"] >= 1 and h["clients"] + h["failures"] == len(SIZES)


PARENT = os.getpid()


class CountingFedAvg(FedAvg):
    """FedAvg whose clients count their own participations in their persistent state."""

    def local_update(self, task: Task, ctx: ClientContext) -> Update:
        ctx.state["rounds"] = ctx.state.get("rounds", torch.zeros(())) + 1
        return super().local_update(task, ctx)


@pytest.mark.parametrize("executor", ["sequential", "processes"])
def test_client_state_persists_on_disk_for_a_lazy_population(tmp_path, executor):
    strategy = CountingFedAvg(clients_per_round=3, local=LocalSGD(epochs=1, batch_size=5))
    teacher = GaussianTeacher(dim=5, num_classes=3, seed=1)
    pop = gaussian_population(20, (4, 12), strategy, model_fn, F.cross_entropy, teacher=teacher, seed=2)
    fleet = LocalFleet(pop, executor, DiskStates(tmp_path))
    state = strategy.init(initial_params(model_fn, 0), 0)
    run_loop(strategy, fleet, state, StopRule(4))
    fleet.close()
    chosen = [c.client_id for r in range(1, 5) for c in strategy.select(pop.clients(), round_rng(0, r))]
    files = sorted(tmp_path.glob("client_*.safetensors"))
    assert len(files) == len(set(chosen))
    store = DiskStates(tmp_path)
    for cid in set(chosen):
        assert int(store.get(cid)["rounds"]) == chosen.count(cid)


def test_a_lazy_population_builds_only_the_sampled_clients_and_regenerates_the_same_data():
    teacher = GaussianTeacher(dim=5, num_classes=3, seed=1)
    strategy = FedAvg(clients_per_round=10, local=LocalSGD(epochs=1, batch_size=10))
    pop = gaussian_population(1_000_000, 50, strategy, model_fn, F.cross_entropy, teacher=teacher, seed=0)
    built = []
    counting = LazyPopulation(pop.sizes, lambda cid: built.append(cid) or pop.make_app(cid))
    fleet = LocalFleet(counting, "vectorized")
    state = strategy.init(initial_params(model_fn, 0), 0)
    result = run_loop(strategy, fleet, state, StopRule(2))
    assert len(built) == 20 and result.state.round == 2
    a, b = pop.app(123_456).train, pop.app(123_456).train
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and len(a) == 50
    assert not torch.equal(a.x, pop.app(123_457).train.x)


def test_vectorized_handles_clients_holding_separate_arrays():
    """Clients built on their own (not views of one array) are gathered into one batch exactly."""
    strategy = CONFORMANCE["fedavg-momentum-wd"]
    data = blobs(n_train=sum(SIZES))
    part = manual_partition(SIZES)
    apps = [ClientApp(c, strategy, model_fn, F.cross_entropy,
                      train=Examples.all(data.x_train[part.train[c]].clone(), data.y_train[part.train[c]].clone()))
            for c in range(len(SIZES))]
    state = strategy.init(initial_params(model_fn, 0), 0)
    tasks = strategy.configure(state, [a.info() for a in apps])
    fast = Vectorized().run([(apps[t.client_id], t) for t in tasks])
    slow = build_fleet(data, part, strategy, model_fn, F.cross_entropy).run(tasks)
    for f, s in zip(fast, slow, strict=True):
        assert_close(f.params, s.params)


def test_an_unknown_client_in_a_task_is_a_clear_error():
    fleet = build_fleet(blobs(n_train=sum(SIZES)), manual_partition(SIZES), FedAvg(), model_fn, F.cross_entropy)
    with pytest.raises(Exception, match="client 99, which is not in this fleet"):
        fleet.run([Task(99, 1, "fit", initial_params(model_fn, 0), 0)])


def test_a_fleet_refuses_two_apps_with_one_client_id():
    data = blobs(n_train=10)
    apps = [ClientApp(3, FedAvg(), model_fn, F.cross_entropy, train=Examples.all(data.x_train, data.y_train))] * 2
    with pytest.raises(ConfigError, match="client ids in a fleet must be unique"):
        LocalFleet(apps)
