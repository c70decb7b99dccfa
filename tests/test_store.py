"""Run-directory files: exact checkpoints, atomic writes, final model loading."""

import json
import os

import pytest
import torch

from fedloop import CheckpointError, load_model
from fedloop.store import RunDir, atomic_write_text, load_checkpoint, read_metrics, save_checkpoint, save_model
from fedloop.types import Failure, RoundRecord, ServerState


def test_checkpoint_round_trip_is_exact_and_keeps_order(tmp_path):
    params = {"z.weight": torch.randn(3, 2), "a.bias": torch.randn(3).double(), "m": torch.randn(1)}
    state = ServerState(round=7, params=params, opt_state={"momentum/z.weight": torch.randn(3, 2)},
                        extras={"c": torch.arange(4.0)}, seed=42, agg_state={"center/m": torch.ones(1)},
                        transform_state={"0/clip": torch.tensor(2.0), "1/count": torch.tensor(3)}, excluded=(2, 9))
    save_checkpoint(tmp_path / "ck.safetensors", state, {"model": "mlp"})
    back, meta = load_checkpoint(tmp_path / "ck.safetensors")
    assert back.round == 7 and back.seed == 42 and meta == {"model": "mlp"} and back.excluded == (2, 9)
    assert list(back.params) == list(params)
    for k in params:
        assert torch.equal(back.params[k], params[k]) and back.params[k].dtype == params[k].dtype
    assert torch.equal(back.opt_state["momentum/z.weight"], state.opt_state["momentum/z.weight"])
    assert torch.equal(back.extras["c"], state.extras["c"])
    for part in ("agg_state", "transform_state"):
        assert list(getattr(back, part)) == list(getattr(state, part))
        assert all(torch.equal(getattr(back, part)[k], v) for k, v in getattr(state, part).items())


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="bad.safetensors: not a readable safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="file not found"):
        load_checkpoint(tmp_path / "none.safetensors")


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")

    def boom(*_):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


def record(r: int) -> RoundRecord:
    return RoundRecord(r, (0, 1, 2, 3), 3, (Failure(2, r, "no reply"),), 0.5, 10, 20, 0.1, {"accuracy": 0.9},
                       {"exchange": 0.08})


def test_metrics_jsonl_holds_one_object_per_round_appended(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.start_records()
    writes = []
    monkeypatch.setattr("fedloop.store.atomic_write_text", lambda *a: writes.append(a))
    for r in (1, 2):
        run.append_record(record(r))
    assert writes == []  # appended, not rewritten
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"round", "clients", "train_loss", "accuracy", "bytes_up", "bytes_down", "seconds",
                            "selected", "failed_clients", "timings"}
    assert rows[0]["selected"] == [0, 1, 2, 3] and rows[0]["failed_clients"] == [{"client": 2, "reason": "no reply"}]


def test_a_line_torn_by_a_crash_is_dropped_and_resuming_keeps_the_rounds_up_to_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    run.start_records()
    for r in (1, 2, 3):
        run.append_record(record(r))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"round": 4, "clien')
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    RunDir(tmp_path).start_records(after_round=2)
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2]


def test_load_model_needs_model_fn_for_custom_models(tmp_path):
    net = torch.nn.Linear(2, 2)
    save_model(tmp_path / "model.safetensors", dict(net.state_dict()), {})
    with pytest.raises(CheckpointError, match="custom model"):
        load_model(tmp_path)
    loaded = load_model(tmp_path, lambda: torch.nn.Linear(2, 2))
    assert torch.equal(loaded.weight, net.weight)


def test_non_finite_numbers_are_written_as_null_and_named(tmp_path):
    run = RunDir(tmp_path)
    run.start_records()
    run.append_record(RoundRecord(1, (0,), 1, (), float("nan"), 1, 1, 0.1, {"accuracy": float("inf")}))
    run.write_json("summary.json", {"loss": float("nan"), "accuracy": 0.5})
    line = (tmp_path / "metrics.jsonl").read_text()
    row = json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert row["train_loss"] is None and row["accuracy"] is None
    assert row["nonfinite"] == ["train_loss", "accuracy"]
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert summary == {"loss": None, "accuracy": 0.5, "nonfinite": ["loss"]}


def test_a_run_directory_has_one_writer(tmp_path):
    import subprocess
    import sys

    RunDir(tmp_path).acquire()
    RunDir(tmp_path).acquire()  # the same process may ask again
    code = f"from fedloop.store import RunDir; RunDir({str(tmp_path)!r}).acquire()"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert other.returncode == 1 and f"another process (pid {os.getpid()}) is writing this run directory" in \
        other.stderr
