"""[tracking]: CSV, TensorBoard and MLflow copies of a run, read back with their own readers, equal to metrics.jsonl;
a backend whose package is missing is a ConfigError naming the extra."""

import csv
import json
import sys

import pytest

from fedloop import ConfigError
from fedloop.build import load_config
from fedloop.experiment import run_config
from fedloop.tracking import TrackingOptions

CONFIG = """seed = 1
rounds = {rounds}
[partition]
num_clients = 6
[strategy]
clients_per_round = 3
[client]
epochs = 1
[eval]
federated = true
[sim]
executor = "sequential"
[tracking]
backend = ["csv", "tensorboard", "mlflow"]
experiment = "tracking-test"
"""


def run(tmp_path, rounds=3, resume=False):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(rounds=rounds))
    out = tmp_path / "run"
    run_config(load_config(config), out, resume=resume)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, rows


def mlflow_run(out):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    return client, (out / "mlflow_run_id").read_text().strip()


def test_every_backend_holds_the_rounds_of_metrics_jsonl(tmp_path):
    out, rows = run(tmp_path)
    keys = ("accuracy", "loss", "fed_accuracy", "train_loss", "bytes_up")
    with (out / "metrics.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [int(r["round"]) for r in table] == [1, 2, 3]
    for got, want in zip(table, rows, strict=True):
        for key in keys:
            assert float(got[key]) == want[key], key
        assert float(got["timings/exchange"]) == want["timings"]["exchange"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    for key in keys:
        assert [(e.step, e.value) for e in events.Scalars(key)] == \
            [(r["round"], pytest.approx(r[key], rel=1e-6)) for r in rows], key
    assert "curves" in events.Tags()["images"] and "config" in " ".join(events.Tags().get("tensors", []))

    client, run_id = mlflow_run(out)
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.data.params["strategy.name"] == "fedavg"
    assert info.data.params["partition.num_clients"] == "6"
    for key in keys:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(r["round"], r[key]) for r in rows], key
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.safetensors", "summary.json", "curves.png", "config.toml"} <= names


def test_a_resumed_run_continues_its_mlflow_run_and_its_csv(tmp_path):
    out, _ = run(tmp_path, rounds=2)
    client, first = mlflow_run(out)
    out, rows = run(tmp_path, rounds=4, resume=True)
    client, again = mlflow_run(out)
    assert again == first
    assert sorted(m.step for m in client.get_metric_history(first, "accuracy")) == [1, 2, 3, 4]
    with (out / "metrics.csv").open() as f:
        assert [int(r["round"]) for r in csv.DictReader(f)] == [r["round"] for r in rows] == [1, 2, 3, 4]


def test_a_missing_package_or_an_unknown_backend_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"tracking.backend = 'mlflow' needs the mlflow package: "
                                          r"pip install 'fedloop\[mlflow\]'"):
        TrackingOptions(backend=("csv", "mlflow")).check_installed()
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(rounds=1))
    from fedloop.cli import main

    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert not (tmp_path / "run").exists()  # refused before anything was written
    config.write_text(CONFIG.format(rounds=1).replace('"mlflow"]', '"wandb"]'))
    with pytest.raises(ConfigError, match="'wandb' is unknown; allowed: csv, tensorboard, mlflow"):
        load_config(config)
