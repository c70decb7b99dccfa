"""The `device` option: resolution and its errors, the CPU path through the same plumbing, and (marked gpu, skipped
with the reason where there is no CUDA device) training on CUDA agreeing with the CPU, bit-identical repeats on one
GPU, a GPU-trained model loading on the CPU and a resume that changes device."""

import json
from multiprocessing import resource_tracker
from pathlib import Path

import pytest
import torch
from conftest import assert_close, blobs, small_model
from safetensors.torch import load_file

from fedloop import ConfigError, Examples, Scaffold, load_config, load_model, run_config
from fedloop.aggregators import AGGREGATORS
from fedloop.build import check_runnable
from fedloop.client import ClientApp
from fedloop.device import deterministic, place_task, resolve, spread, to_cpu
from fedloop.net.client_process import run_client
from fedloop.randomness import Seeded, noise_like
from fedloop.sim import vectorized
from fedloop.sim.executors import Job, Sequential
from fedloop.sim.population import AppList
from fedloop.sim.processes import Processes
from fedloop.strategies import FedAvg
from fedloop.types import Broadcast, Task, Update

CUDA = pytest.param("cuda", marks=pytest.mark.gpu)
DEVICES = ["cpu", CUDA]

SMALL = ["rounds=2", "partition.num_clients=6", "strategy.clients_per_round=3", "client.epochs=1",
         "client.batch_size=32", "eval.federated=false", "checkpoint.every=1"]


def run(tmp_path: Path, name: str, *sets: str) -> tuple[dict, dict, Path]:
    out = tmp_path / name
    run_config(load_config(None, [*SMALL, *sets]), out)
    return load_file(out / "model.safetensors"), json.loads((out / "summary.json").read_text()), out


def test_names_resolve_and_a_device_that_is_not_here_is_a_config_error() -> None:
    assert resolve("cpu") == torch.device("cpu")
    assert resolve("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    assert spread("cpu") == (torch.device("cpu"),)
    for bad in ("tpu", "cuda:x", "CUDA", ""):
        with pytest.raises(ConfigError, match="expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"):
            resolve(bad)
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ConfigError, match=f"device = '{missing}': this machine has"):
        resolve(missing)
    with pytest.raises(ConfigError, match="device = 'tpu'"):
        load_config(None, ["device=tpu"])
    with pytest.raises(ConfigError, match=f"device = '{missing}'"):
        check_runnable(load_config(None, [f"device={missing}"]))
    with pytest.raises(ConfigError, match=f"--device = '{missing}'"):  # before it connects to anything
        run_client("127.0.0.1:1", "nowhere", token_file=None, insecure=True, device=missing)


def test_auto_is_resolved_in_config_toml_and_summary_names_the_device(tmp_path: Path) -> None:
    params, summary, out = run(tmp_path, "auto")
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert f'device = "{here}"' in (out / "config.toml").read_text()
    assert summary["device"] == ("cuda:0" if here == "cuda" else "cpu")
    assert ("nondeterministic_ops" in summary) == (here == "cuda")
    explicit, summary_cpu, out_cpu = run(tmp_path, "cpu", "device=cpu")
    assert summary_cpu["device"] == "cpu" and "nondeterministic_ops" not in summary_cpu
    assert 'device = "cpu"' in (out_cpu / "config.toml").read_text()
    if here == "cpu":  # the explicit CPU takes the very path "auto" took here: the same bits
        assert all(torch.equal(params[k], explicit[k]) for k in params)


CASES = {
    "fedavg-vectorized": ["sim.executor=vectorized"],
    "fedprox-vectorized": ["strategy.name=fedprox", "strategy.mu=0.1", "sim.executor=vectorized"],
    "scaffold-sequential": ["strategy.name=scaffold", "sim.executor=sequential"],
    "scaffold-vectorized": ["strategy.name=scaffold", "sim.executor=vectorized"],
    "ditto-sequential": ["strategy.name=ditto", "sim.executor=sequential", "eval.federated=true"],
    "dpsgd-vectorized": ["privacy.mode=dp-sgd", "privacy.clip=1.0", "privacy.noise_multiplier=0.5",
                         "privacy.secure_noise=false", "sim.executor=vectorized"],
    "local-dp": ["privacy.mode=local", "privacy.clip=1.0", "privacy.noise_multiplier=0.5",
                 "privacy.secure_noise=false", "sim.executor=sequential"],
    "fedavg-processes-vectorized": ["sim.executor=processes-vectorized", "sim.workers=2"],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_a_device_trains_what_the_cpu_trains(tmp_path: Path, device: str, case: str) -> None:
    """Every path on `device` (model, data, broadcast and client state moved there; noise drawn on the CPU and
    moved) gives the CPU reference's model within float tolerance, and its metrics."""
    reference, ref_summary, _ = run(tmp_path, "reference", *CASES[case], "device=cpu", "sim.executor=sequential")
    params, summary, out = run(tmp_path, device, *CASES[case], f"device={device}")
    assert_close(params, reference, rtol=1e-4, atol=1e-5)
    assert summary["accuracy"] == pytest.approx(ref_summary["accuracy"], abs=0.02)
    assert load_model(out).training is False  # loads here, on the CPU, whatever trained it


def test_a_resumed_run_may_change_device(tmp_path: Path) -> None:
    """A run whose config.toml says CUDA resumes on the CPU when told (--set device=cpu); without it, a machine
    without that device refuses with the fix. The computation is the same: the bits equal an uninterrupted run."""
    whole, _, _ = run(tmp_path, "whole", "rounds=4", "device=cpu")
    out = tmp_path / "moved"
    run_config(load_config(None, [*SMALL, "device=cpu"]), out)
    toml = out / "config.toml"
    toml.write_text(toml.read_text().replace('device = "cpu"', 'device = "cuda:0"'))  # as a GPU run writes it
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device = 'cuda:0': this machine has no CUDA device"):
            check_runnable(load_config(toml, ["rounds=4"]), resuming=True)
    run_config(load_config(toml, ["rounds=4", "device=cpu"]), out, resume=True)
    moved = load_file(out / "model.safetensors")
    assert all(torch.equal(whole[k], moved[k]) for k in whole)
    assert json.loads((out / "summary.json").read_text())["rounds"] == 4


@pytest.mark.gpu
def test_same_seed_same_gpu_same_bits(tmp_path: Path) -> None:
    first, summary, out = run(tmp_path, "one", "device=cuda", "sim.executor=vectorized")
    again, _, out_again = run(tmp_path, "two", "device=cuda", "sim.executor=vectorized")
    assert (out / "model.safetensors").read_bytes() == (out_again / "model.safetensors").read_bytes()
    assert summary["device"] == "cuda:0" and isinstance(summary["nondeterministic_ops"], list)
    assert all(v.device.type == "cpu" for v in first.values())


@pytest.mark.parametrize("device", DEVICES)
def test_a_client_works_on_its_device_and_returns_cpu_tensors(device: str) -> None:
    """The client app moves the broadcast, its data and its state to its device, and sends back (and keeps) CPU
    tensors: SCAFFOLD's control variate is client state, its server variate a broadcast extra."""
    data = blobs()
    strategy = Scaffold()
    where = resolve(device)
    params = {k: v.detach() for k, v in small_model().named_parameters()}
    state = strategy.init(params, 0)
    app = ClientApp(0, strategy, small_model, torch.nn.functional.cross_entropy,
                    train=Examples.all(data.x_train, data.y_train),
                    device=where)
    for round_ in (1, 2):
        task = Task(0, round_, "fit", Broadcast(round_ - 1, state.params, state.extras), seed=round_)
        reply = app.handle(task)
        assert all(t.device.type == "cpu" for t in reply.params.values()), reply
        kept = app.states.latest(0)
        assert kept and all(t.device.type == "cpu" for t in kept.values())
    moved = place_task(task, where)
    assert all(t.device == where for t in moved.params.values())
    assert place_task(task, where).broadcast is moved.broadcast  # moved once per broadcast
    assert all(t.device.type == "cpu" for t in to_cpu(moved.params).values())


@pytest.mark.parametrize("device", DEVICES)
def test_noise_is_drawn_on_the_cpu_and_lands_on_the_tensors_device(device: str) -> None:
    where = resolve(device)
    tensors = {"w": torch.zeros(3, 4, device=where), "b": torch.zeros(4, device=where)}
    noise = noise_like(Seeded(7), tensors, 2.0)
    on_cpu = noise_like(Seeded(7), {k: v.cpu() for k, v in tensors.items()}, 2.0)
    assert all(noise[k].device == where for k in tensors)
    assert all(torch.equal(noise[k].cpu(), on_cpu[k]) for k in tensors)  # the same draws, wherever they land


def test_deterministic_algorithms_change_nothing_on_the_cpu() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic(torch.device("cpu")) as ran:
        assert torch.are_deterministic_algorithms_enabled() == before
    assert ran == []


@pytest.mark.gpu
def test_an_operation_without_a_deterministic_implementation_is_recorded() -> None:
    with deterministic(torch.device("cuda", 0)) as ran:
        assert torch.are_deterministic_algorithms_enabled()
        torch.histc(torch.rand(100, device="cuda"), bins=10)  # CUDA's histc has no deterministic implementation
    assert any("histc" in op for op in ran), ran
    assert not torch.are_deterministic_algorithms_enabled()


def test_vectorized_blocks_shrink_when_the_device_runs_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block too big for the device's memory is run again as smaller blocks: the same clients, the same
    results."""
    data = blobs(n_train=200)
    app = ClientApp(0, FedAvg(), small_model, torch.nn.functional.cross_entropy,
                    train=Examples.all(data.x_train, data.y_train))
    params = {k: v.detach() for k, v in small_model().named_parameters()}
    program = app.strategy.local.program()
    tasks = [Task(c, 1, "fit", Broadcast(0, params), seed=c) for c in range(10)]
    rows = [Examples(data.x_train, data.y_train, torch.arange(c * 20, c * 20 + 20))
            for c in range(10)]
    whole = vectorized.train_group(small_model(), [program] * 10, app.loss_fn, tasks, rows)
    real, sizes = vectorized._train_chunk, []

    def small_device(model, programs, loss_fn, tasks, data):  # noqa: ANN001, ANN202
        sizes.append(len(tasks))
        if len(tasks) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (a test's small device)")
        return real(model, programs, loss_fn, tasks, data)

    monkeypatch.setattr(vectorized, "_train_chunk", small_device)
    blocks = vectorized.train_group(small_model(), [program] * 10, app.loss_fn, tasks, rows)
    assert sizes[:3] == [10, 5, 2] and max(sizes[3:]) <= 2
    for a, b in zip(whole, blocks, strict=True):
        assert_close(a.update, b.update)
        assert a.steps == b.steps


@pytest.mark.slow
def test_spawned_workers_give_the_forked_workers_results() -> None:
    """Workers on accelerators are spawned (CUDA does not survive a fork), their client apps sent by cloudpickle;
    here on the CPU, the path every GPU run of the processes executor takes."""
    data = blobs(n_train=120)
    apps = [ClientApp(c, FedAvg(), small_model, torch.nn.functional.cross_entropy,
                      train=Examples(data.x_train, data.y_train, torch.arange(c * 20, c * 20 + 20)))
            for c in range(6)]
    population = AppList(apps)
    params = {k: v.detach() for k, v in small_model().named_parameters()}
    jobs = [Job(a, Task(a.client_id, 1, "fit", Broadcast(0, params), seed=a.client_id), {}) for a in apps]
    reference = Sequential().run(jobs)
    spawned = Processes(population.app, workers=2, inner="vectorized", devices=(torch.device("cpu"),) * 2,
                        start="spawn")
    try:
        results = spawned.run(jobs)
    finally:
        spawned.close()
        resource_tracker._resource_tracker._stop()  # the helper every spawn starts; it would outlive the test
    for a, b in zip(reference, results, strict=True):
        assert_close(a.update, b.update, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregators_work_on_the_device_of_their_inputs(device: str, name: str) -> None:
    """fedloop aggregates on the CPU; an aggregator given updates on a device stays there and agrees with the
    CPU (a strategy author's own server, or a future GPU server, may call it so)."""
    where = resolve(device)
    aggregator = AGGREGATORS[name](**({"f": 1} if name in ("krum", "multi_krum", "bulyan") else {}))
    gen = torch.Generator().manual_seed(1)
    updates = [Update(c, 1, {"a": torch.randn(3, 2, generator=gen), "b": torch.randn(4, generator=gen)}, 5 + c)
               for c in range(12)]
    params = {"a": torch.zeros(3, 2), "b": torch.zeros(4)}
    expected, _ = aggregator.apply(updates, aggregator.init(params))
    moved = [Update(u.client_id, 1, {k: v.to(where) for k, v in u.params.items()}, u.num_examples) for u in updates]
    got, _ = aggregator.apply(moved, aggregator.init({k: v.to(where) for k, v in params.items()}))
    assert all(v.device == where for v in got.values())
    assert_close({k: v.cpu() for k, v in got.items()}, expected)
