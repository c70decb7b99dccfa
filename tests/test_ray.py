"""The Ray executor on a local Ray with 2 CPUs: the same results as the local sequential reference, client state
kept by the fleet, and Failures for dead actors and missed deadlines."""

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import ray
import torch
from conftest import assert_close, assert_equal, first_to_create, run_sizes, small_model
from test_sim import CONFORMANCE, SIZES, CountingFedAvg, client_apps
from torch import nn

from fedloop import FedAvg, LocalSGD, RoundPolicy, Sampler
from fedloop.errors import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    here = str(Path(__file__).parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    marks = tempfile.mkdtemp(prefix="fedloop-ray-test-")
    os.environ["FEDLOOP_TEST_MARKS"] = marks
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "FEDLOOP_TEST_MARKS": marks}})  # actors import this
    yield                                                                                 # test module's classes
    ray.shutdown()
    shutil.rmtree(marks)
    del os.environ["FEDLOOP_TEST_MARKS"]


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
    assert re.fullmatch(r"ray \(2 actors, executor auto: (sequential|vectorized)\)", res.summary["executor"])


def test_a_client_that_kills_its_actor_every_time_fails_alone_and_the_others_train():
    strategy = FedAvg(sampler=Sampler(None), local=LocalSGD(epochs=1, batch_size="full"))
    res = run_sizes(strategy, SIZES, "sequential", rounds=2, model=DiesInActor, engine="ray")
    assert res.state.round == 2
    for h in res.history:
        assert h["clients"] == len(SIZES) - 1 and [f["client"] for f in h["failed_clients"]] == [3]
        assert "a Ray actor was lost" in h["failed_clients"][0]["reason"]
        assert any("run client by client" in i for i in h["incidents"])


class DiesOnceInActor(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x):
        mark = os.environ.get("FEDLOOP_TEST_MARKS")
        if x.shape[0] == 2 and in_actor() and mark and first_to_create(os.path.join(mark, "died")):
            os._exit(9)  # as if the actor's process were killed from outside, once
        return self.lin(x)


@pytest.mark.parametrize("executor", ["sequential", "vectorized"])
def test_an_actor_killed_mid_round_changes_no_bit_its_share_is_run_again(executor):
    strategy = FedAvg(sampler=Sampler(None), local=LocalSGD(epochs=1, batch_size="full"))
    clean = run_sizes(strategy, SIZES, "processes-vectorized" if executor == "vectorized" else "processes", rounds=2,
                      model=DiesOnceInActor, workers=2)
    died = Path(os.environ["FEDLOOP_TEST_MARKS"]) / "died"
    died.unlink(missing_ok=True)
    hit = run_sizes(strategy, SIZES, executor, rounds=2, model=DiesOnceInActor, engine="ray")
    assert died.exists()
    assert_equal(hit.state.params, clean.state.params)  # the same shares as 2 local processes: the same bits
    first = hit.history[0]
    assert first["failures"] == 0 and first["clients"] == len(SIZES)
    assert len(first["incidents"]) == 1 and re.fullmatch(
        r"round 1 \(fit\): a Ray actor was lost \(ActorDiedError\); its share \(clients [\d, ]+\) was run again",
        first["incidents"][0])


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


@ray.remote(num_cpus=1)
class Squatter:
    def ready(self) -> bool:
        return True


def test_a_run_with_no_actor_left_stops_as_interrupted_with_its_files(tmp_path):
    """After round 1 both actors are killed and two other actors take both CPUs, so no replacement can start: the
    run stops as interrupted after round 1, with its model, summary and checkpoint."""
    from fedloop.observers import Observer
    from fedloop.run import RunOptions, train
    from fedloop.sim.local import LocalFleet
    from fedloop.sim.population import AppList
    from fedloop.sim.ray_executor import RayExecutor

    strategy = FedAvg(sampler=Sampler(None), local=LocalSGD(epochs=1))
    apps = client_apps(strategy)
    executor = RayExecutor(AppList(apps), "sequential", workers=2)
    executor.start_timeout = 3.0  # for replacements: no CPU will be free for them
    squatters = []

    class TakeTheCluster(Observer):
        def round(self, record, state):
            if state.round == 1:
                for actor in executor.actors:
                    ray.kill(actor)
                squatters.extend(Squatter.remote() for _ in range(2))
                ray.get([s.ready.remote() for s in squatters])

    fleet = LocalFleet(AppList(apps), executor)
    try:
        res = train(fleet, small_model, strategy,
                    RunOptions(rounds=3, out=tmp_path / "r", observers=(TakeTheCluster(),)))
    finally:
        fleet.close()
        for s in squatters:
            ray.kill(s)
    assert res.stop_reason == "interrupted" and res.state.round == 1
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["rounds"] == 1
    assert (tmp_path / "r" / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())[-1] == "round_0001.safetensors"
