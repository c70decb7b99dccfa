"""The command line, run as a real process: run, partition, report, and errors without tracebacks."""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fedloop
from fedloop.store import UMASK, load_checkpoint

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


def digest(run) -> dict[str, str]:
    """sha256 of the model and every checkpoint, and of metrics.jsonl without its timings."""
    import hashlib

    files = [run / "model.safetensors", *sorted((run / "checkpoints").iterdir())]
    out = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    rows = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "timings")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    out["metrics"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    return out


def test_the_same_command_writes_the_same_bytes_even_on_a_loaded_machine(tmp_path):
    """The default job twice, the second time with two processes burning both cores: auto chooses from the
    workload, not from timing, and the files carry no metadata in varying order."""
    proc = fedloop_cli("run", "--out", str(tmp_path / "a"), "--quiet", *FAST)
    assert proc.returncode == 0, proc.stderr
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        proc = fedloop_cli("run", "--out", str(tmp_path / "b"), "--quiet", *FAST)
        assert proc.returncode == 0, proc.stderr
    finally:
        for b in burners:
            b.kill()
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert len(digest(tmp_path / "a")) == 5  # the model, three checkpoints, metrics
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    resolved = fedloop.load_config(tmp_path / "a" / "config.toml")
    assert summary["executor"] == f"auto: {resolved.sim.executor}" and resolved.sim.executor != "auto"
    again = fedloop_cli("run", str(tmp_path / "a" / "config.toml"), "--out", str(tmp_path / "c"), "--quiet")
    assert again.returncode == 0 and digest(tmp_path / "c") == digest(tmp_path / "a")


def test_run_uses_the_auto_executor_by_default_and_logs_its_choice(tmp_path):
    proc = fedloop_cli("run", "--out", str(tmp_path / "r"), "--quiet", *FAST)
    assert proc.returncode == 0
    chosen = re.search(r"auto executor: (\w+) \(55,210 params x 10 rows per step <= 1,000,000; a dense model, "
                       r"differentiated in closed form", proc.stderr)
    assert chosen and chosen[1] == "vectorized"
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["executor"] == f"auto: {chosen[1]}"


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


def test_an_existing_run_directory_is_refused_unless_resumed_or_overwritten(tmp_path):
    out = tmp_path / "run"
    assert fedloop_cli("run", "--out", str(out), "--quiet", *FAST).returncode == 0
    first = digest(out)
    again = fedloop_cli("run", "--out", str(out), "--quiet", *FAST)
    assert again.returncode == 2 and "already holds a run; --resume continues it, --overwrite replaces it" \
        in again.stderr
    assert digest(out) == first  # nothing of it was touched
    assert fedloop_cli("run", "--out", str(out), "--quiet", "--overwrite", *FAST).returncode == 0
    # a file, an unwritable place, a directory that is not a run: clear errors before any data is read
    (tmp_path / "file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    for where, needle in ((tmp_path / "file", "exists and is not a directory"),
                          (Path("/proc/fedloop-run"), "cannot write the run directory"),
                          (tmp_path / "mine", "is not empty and is not a fedloop run directory")):
        proc = fedloop_cli("run", "--out", str(where), "--overwrite", "--set", "data.name=mnist", "--set",
                           "data.path=/nowhere")
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    mode = (out / "summary.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~UMASK  # normal permissions, not 0600


def test_an_interrupted_run_keeps_its_files_and_resumes_to_the_uninterrupted_model(tmp_path):
    args = ["--quiet", "--set", "rounds=8", "--set", "checkpoint.every=3", "--set", "client.epochs=1"]
    assert fedloop_cli("run", "--out", str(tmp_path / "straight"), *args).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "fedloop.cli", "run", "--out", str(tmp_path / "cut"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "stop interrupted" in out and "--resume" in err
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted" and 4 <= summary["rounds"] < 8
    assert len(metrics.read_text().splitlines()) == summary["rounds"]  # no file holds a round the others lack
    fedloop.load_model(tmp_path / "cut")  # the latest model is there
    resumed = fedloop_cli("run", "--resume", str(tmp_path / "cut"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert digest(tmp_path / "cut")["model.safetensors"] == digest(tmp_path / "straight")["model.safetensors"]
    assert digest(tmp_path / "cut")["metrics"] == digest(tmp_path / "straight")["metrics"]


def test_a_resumed_run_with_client_state_matches_and_may_grow_but_not_change(tmp_path):
    args = ["--quiet", "--set", "strategy.name=scaffold", "--set", "client.epochs=1",
            "--set", "sim.executor=vectorized"]
    assert fedloop_cli("run", "--out", str(tmp_path / "six"), "--set", "rounds=6", *args).returncode == 0
    assert fedloop_cli("run", "--out", str(tmp_path / "grown"), "--set", "rounds=4", *args).returncode == 0
    grown = fedloop_cli("run", "--resume", str(tmp_path / "grown"), "--set", "rounds=6", "--quiet")
    assert grown.returncode == 0, grown.stderr
    assert fedloop.load_config(tmp_path / "grown" / "config.toml").rounds == 6
    assert digest(tmp_path / "grown")["model.safetensors"] == digest(tmp_path / "six")["model.safetensors"]
    changed = fedloop_cli("run", "--resume", str(tmp_path / "grown"), "--set", "rounds=8", "--set", "client.lr=0.1",
                          "--set", "model.name=logreg")
    assert changed.returncode == 2 and "client.lr, model.name differ from its config.toml" in changed.stderr


def test_a_diverging_run_stops_with_a_clear_message_and_standard_json(tmp_path):
    proc = fedloop_cli("run", "--out", str(tmp_path / "r"), "--quiet", "--set", "client.lr=1e6", "--set",
                       "rounds=20", "--set", "client.epochs=1")
    assert proc.returncode == 1 and "stop diverged" in proc.stdout and "the run diverged" in proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert summary["stop_reason"] == "diverged" and summary["rounds"] < 20
    for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))


def test_without_a_terminal_each_round_is_one_plain_line_and_log_txt_has_them(tmp_path):
    proc = fedloop_cli("run", "--out", str(tmp_path / "r"), *FAST)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert [int(line.split(":")[0].split()[1]) for line in lines] == [1, 2, 3, 4]
    assert re.fullmatch(r"round 2: 10 updates, 0 failures, train_loss \d\.\d{4}, loss \d\.\d{4}, accuracy \d\.\d{4}, "
                        r"fed_loss \d\.\d{4}, fed_accuracy \d\.\d{4}, \d+\.\d\d s", lines[1]), lines[1]
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "auto executor:" in log and all(line in log for line in lines)
    assert proc.stdout.splitlines()[-1].startswith("rounds 4  stop rounds  accuracy ")
    rep = fedloop_cli("report", str(tmp_path / "r"))
    assert re.fullmatch(r"rounds 4  stop rounds  accuracy \d\.\d{4}  loss \d\.\d{4}  moved \d+\.\d MB",
                        rep.stdout.splitlines()[-1])


def test_in_a_terminal_the_live_bar_fits_80_columns_and_log_lines_stay_above_it(tmp_path):
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "80", "LINES": "24", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "fedloop.cli", "run", "--out", str(tmp_path / "r"), *FAST],
                            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    lines = [line.rstrip() for part in screen.split("\n") for line in part.split("\r") if line.strip()]
    bars = [line for line in lines if line.startswith("round ") and "━" in line]
    logs = [line for line in lines if "fedloop.sim" in line or "auto executor" in line]
    assert bars and logs and max(len(line) for line in bars + logs) <= 80, [line for line in lines if len(line) > 80]
    assert bars and "acc" in bars[-1] and "round 4/4" in bars[-1]
    assert any("auto executor:" in line and "━" not in line for line in lines)  # a log line on its own
    assert not any(re.match(r"round \d+: ", line) for line in lines)  # the bar, not plain round lines


def test_every_argument_has_help_and_there_is_a_version():
    from fedloop.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"fedloop {name} {action.dest}"
    proc = fedloop_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"fedloop {fedloop.__version__}"
