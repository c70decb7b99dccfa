"""`fedloop status`: one screen on a run directory, running or finished, read from its files and its writer's lock."""

import json
import signal
import subprocess
import sys
import time

import pytest

from fedloop.cli import main
from fedloop.status import read_status
from fedloop.store import RunDir


def fake_run(path, rows, rounds=10, summary=None, privacy=""):
    path.mkdir()
    (path / "config.toml").write_text(f'rounds = {rounds}\n[data]\nname = "digits"\n[strategy]\nname = "fedprox"\n'
                                      + privacy)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def row(r, seconds=2.0, **more):
    return {"round": r, "clients": 5, "failures": 0, "accuracy": 0.5 + r / 100, "loss": 1.0 / r, "seconds": seconds,
            **more}


def test_a_running_run_shows_its_round_eta_and_the_failures_of_the_round_in_progress(tmp_path):
    rows = [row(1, 1.0), row(2, 2.0), row(3, 3.0, epsilon=0.5),
            {"round": 4, "clients": 1, "failures": 2, "failed": True, "seconds": 0.5,
             "failed_clients": [{"client": 3, "reason": "disconnected"}, {"client": 7, "reason": "timed out"}]}]
    path = fake_run(tmp_path / "run", rows, privacy='[privacy]\nmode = "central"\nmax_epsilon = 4.0\ndelta = 1e-5\n')
    writer = RunDir(path)
    writer.acquire()  # as a running fedloop process holds it
    try:
        s = read_status(path)
    finally:
        writer.release()
    assert (s.status, s.round, s.rounds, s.strategy, s.dataset) == ("running", 3, 10, "fedprox", "digits")
    assert s.pid > 0 and s.eta_seconds == pytest.approx(2.0 * 7)  # mean of the rounds done, times 7 left
    assert s.elapsed_seconds == pytest.approx(6.5) and s.metrics["accuracy"] == pytest.approx(0.53)
    assert (s.epsilon, s.max_epsilon, s.delta) == (0.5, 4.0, 1e-5)
    assert s.failures == 2 and s.failed_attempts == 1 and s.failed_clients[0] == {"client": 3,
                                                                                  "reason": "disconnected"}
    assert read_status(path).status == "stopped"  # the lock released without a summary: the process is gone


@pytest.mark.parametrize(("reason", "status"), [("rounds", "finished"), ("target_accuracy", "finished"),
                                                ("interrupted", "interrupted"), ("diverged", "diverged"),
                                                ("privacy_budget", "privacy_budget")])
def test_a_finished_run_says_how_it_ended(tmp_path, reason, status, capsys):
    path = fake_run(tmp_path / "run", [row(1), row(2)], summary={"stop_reason": reason, "rounds": 2})
    assert main(["status", str(path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["status"], got["round"], got["eta_seconds"], got["stop_reason"]) == (status, 2, None, reason)
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert status in out and "2 of 10" in out and "fedprox on digits" in out and "eta" not in out


def test_bad_run_directories_are_clear_errors(tmp_path, capsys):
    assert main(["status", str(tmp_path / "missing")]) == 2
    assert "missing: no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["status", str(tmp_path / "empty")]) == 2
    assert "not a fedloop run directory" in capsys.readouterr().err
    path = fake_run(tmp_path / "run", [row(1)])
    (path / "config.toml").write_text("rounds = [")
    assert main(["status", str(path)]) == 2
    assert "config.toml: not a readable TOML config" in capsys.readouterr().err
    (path / "config.toml").write_text("rounds = 3\n")
    (path / "metrics.jsonl").write_text('{"round": 1, "seconds": 1.0}\n{"round": 2, "sec')  # torn by a crash
    assert read_status(path).round == 1


@pytest.mark.slow
def test_the_status_of_a_real_run_while_it_runs_and_after_it_is_stopped(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fedloop.cli", "run", "--out", str(out), "--quiet",
                             "--set", "rounds=5000", "--set", "eval.federated=false", "--set", "checkpoint.every=1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, "the run never showed a round"
            if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size:
                s = read_status(out)
                if s.round >= 2:
                    break
            time.sleep(0.2)
        assert s.status == "running" and s.pid == proc.pid and s.rounds == 5000 and s.eta_seconds > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    done = subprocess.run([sys.executable, "-m", "fedloop.cli", "status", str(out), "--json"], capture_output=True,
                          text=True, timeout=60)
    got = json.loads(done.stdout)
    assert got["status"] == "interrupted" and got["pid"] is None and got["round"] >= 2
