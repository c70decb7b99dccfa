"""The Ray engine on a local Ray with 2 CPUs: the same results as the local sequential reference."""

import os
from pathlib import Path

import pytest
import ray
from conftest import blobs, manual_partition
from test_sim import CONFORMANCE, SIZES, CountingFedAvg, assert_close, model_fn, run
from torch.nn import functional as F

from fedloop import LocalSGD
from fedloop.errors import ConfigError
from fedloop.experiment import build_apps
from fedloop.sim import make_fleet
from fedloop.sim.population import AppList


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    here = str(Path(__file__).parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})  # actors import this test module's classes
    yield
    ray.shutdown()


@pytest.mark.parametrize("executor", ["vectorized", "sequential"])
@pytest.mark.parametrize("strategy", ["fedavg-momentum-wd", "fedsgd", "fedprox"])
def test_ray_engine_matches_the_local_reference(strategy, executor):
    res = run(CONFORMANCE[strategy], executor, engine="ray")
    assert_close(res.state.params, run(CONFORMANCE[strategy], "sequential").state.params)
    assert res.summary["executor"] == f"ray (2 actors, executor {executor})"


def test_client_state_travels_between_ray_actors_and_the_driver():
    strategy = CountingFedAvg(clients_per_round=None, local=LocalSGD(epochs=1, batch_size=5))
    res = run(strategy, "auto", rounds=3, engine="ray")
    assert res.state.round == 3
    apps = build_apps(blobs(n_train=sum(SIZES)), manual_partition(SIZES), strategy, model_fn, F.cross_entropy)
    fleet = make_fleet(AppList(apps), engine="ray", executor="sequential")
    tasks = strategy.configure(strategy.init(res.state.params, 0), fleet.clients())
    for _ in range(2):
        fleet.run(tasks)
    assert all(int(fleet.states.get(c)["rounds"]) == 2 for c in range(len(SIZES)))
    fleet.close()


def test_process_executors_cannot_run_inside_ray_actors():
    with pytest.raises(ConfigError, match="cannot run inside Ray actors"):
        run(CONFORMANCE["fedavg"], "processes", engine="ray")
