"""The Ray executor on a local Ray with 2 CPUs: the same results as the local sequential reference, client state
kept by the fleet, and Failures for dead actors and missed deadlines."""

import os
import time
from pathlib import Path

import pytest
import ray
import torch
from conftest import assert_close, run_sizes
from test_sim import CONFORMANCE, SIZES, CountingFedAvg
from torch import nn

from fedloop import FedAvg, LocalSGD, RoundPolicy, Sampler
from fedloop.errors import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    here = str(Path(__file__).parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})  # actors import this test module's classes
    yield
    ray.shutdown()


def in_actor() -> bool:
    return ray.get_runtime_context().get_actor_id() is not None


class DiesInActor(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x):
        if x.shape[0] == 2 and in_actor():
            os._exit(3)  # the actor dies mid-round (only for the 2-example client)
        return self.lin(x)


class HangsInActor(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x):
        if x.shape[0] == 2 and in_actor():
            time.sleep(60)
        return self.lin(x)


@pytest.mark.parametrize("executor", ["vectorized", "sequential"])
@pytest.mark.parametrize("strategy", ["fedavg-momentum-wd", "fedsgd", "fedprox", "scaffold", "central-dp-adaptive",
                                      "dp-sgd"])
def test_ray_engine_matches_the_local_reference(strategy, executor):
    res = run_sizes(CONFORMANCE[strategy], SIZES, executor, engine="ray")
    ref = run_sizes(CONFORMANCE[strategy], SIZES, "sequential")
    assert_close(res.state.params, ref.state.params)
    assert_close(res.state.extras, ref.state.extras)
    assert res.summary["executor"] == f"ray (2 actors, executor {executor})"


def test_client_state_stays_with_the_fleet_while_actors_train():
    strategy = CountingFedAvg(sampler=Sampler(None), local=LocalSGD(epochs=1, batch_size=5))
    res = run_sizes(strategy, SIZES, "auto", engine="ray")
    assert [h["participations"] for h in res.history] == [1.0, 2.0, 3.0]


def test_a_dead_actor_costs_its_share_and_the_next_round_runs():
    strategy = FedAvg(sampler=Sampler(None), local=LocalSGD(epochs=1, batch_size="full"))
    res = run_sizes(strategy, SIZES, "sequential", rounds=2, model=DiesInActor, engine="ray")
    assert res.state.round == 2
    for h in res.history:
        assert h["failures"] >= 1 and h["clients"] + h["failures"] == len(SIZES)
        assert all("Ray actor died" in f["reason"] for f in h["failed_clients"])


def test_a_share_past_the_round_deadline_fails_and_its_actor_is_replaced():
    strategy = FedAvg(sampler=Sampler(None), local=LocalSGD(epochs=1, batch_size="full"))
    start = time.monotonic()
    res = run_sizes(strategy, SIZES, "sequential", rounds=2, model=HangsInActor, engine="ray",
                    policy=RoundPolicy(round_deadline=4.0))
    assert res.state.round == 2 and time.monotonic() - start < 60  # never waits out the 60 s hang
    for h in res.history:
        assert h["failures"] >= 1 and h["clients"] + h["failures"] == len(SIZES)
        assert all("deadline" in f["reason"] for f in h["failed_clients"])
    assert torch.isfinite(res.state.params["lin.weight"]).all()


def test_process_executors_cannot_run_inside_ray_actors():
    with pytest.raises(ConfigError, match="cannot run inside Ray actors"):
        run_sizes(CONFORMANCE["fedavg"], SIZES, "processes", engine="ray")
