"""The command line, run as a real process: run, partition, report, and errors without tracebacks."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import fedloop
from fedloop.store import load_checkpoint

pytestmark = pytest.mark.slow

FAST = ["--set", "rounds=4", "--set", "eval.every=2", "--set", "checkpoint.every=2", "--set", "client.epochs=1"]


def fedloop_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fedloop.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_run_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    proc = fedloop_cli("run", "--out", str(out), "--quiet", *FAST)
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    assert names >= {"config.toml", "partition.json", "metrics.jsonl", "checkpoints", "model.safetensors",
                     "summary.json", "curves.png"}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "round_0000.safetensors", "round_0002.safetensors", "round_0004.safetensors"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert "accuracy" in rows[1] and "accuracy" not in rows[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 4 and summary["stop_reason"] == "rounds"
    assert summary["accuracy"] == rows[-1]["accuracy"]
    part = json.loads((out / "partition.json").read_text())
    rows_assigned = sorted(i for c in part["clients"].values() for i in c["train"] + c["test"])
    assert rows_assigned == list(range(len(rows_assigned)))
    cfg = fedloop.load_config(out / "config.toml")
    assert cfg.rounds == 4
    # the final model equals the last checkpoint, and load_model rebuilds it
    final, _ = load_checkpoint(out / "checkpoints" / "round_0004.safetensors")
    model = fedloop.load_model(out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, final.params[k])
    assert set(load_file(out / "model.safetensors")) == set(final.params)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in proc.stdout

    rep = fedloop_cli("report", str(out))
    assert rep.returncode == 0 and "fed_accuracy" in rep.stdout


def test_the_same_command_twice_gives_the_same_model(tmp_path):
    # auto may choose differently on a busy machine (results then agree within float tolerance), so the
    # bit-for-bit repeat pins the executor
    for name in ("a", "b"):
        proc = fedloop_cli("run", "--out", str(tmp_path / name), "--quiet", *FAST, "--set", "sim.executor=vectorized")
        assert proc.returncode == 0
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["executor"] == "vectorized"


def test_run_uses_the_auto_executor_by_default_and_logs_its_choice(tmp_path):
    proc = fedloop_cli("run", "--out", str(tmp_path / "r"), "--quiet", *FAST)
    assert proc.returncode == 0
    assert "auto executor:" in proc.stderr and "client-steps per second" in proc.stderr
    chosen = json.loads((tmp_path / "r" / "summary.json").read_text())["executor"]
    assert chosen.split(": ")[0] == "auto" and chosen.split(": ")[1] in ("sequential", "vectorized", "processes")


def test_partition_command_prints_counts_and_saves_a_heatmap(tmp_path):
    png = tmp_path / "heat.png"
    proc = fedloop_cli("partition", "--set", "partition.scheme=shards", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert "scheme shards: 20 clients" in proc.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_errors_are_one_clear_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nname = "digits"\ncolour = "red"\n')
    for args, needle in ((["run", str(bad)], "unknown key 'data.colour'"),
                         (["run", "--set", "data.name=mnist", "--set", f"data.path={tmp_path}"],
                          "train-images-idx3-ubyte"),
                         (["report", str(tmp_path)], "metrics.jsonl: not found")):
        proc = fedloop_cli(*args)
        assert proc.returncode == 2
        assert needle in proc.stderr and "Traceback" not in proc.stderr
