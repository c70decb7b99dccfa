"""What a new user meets in the first hour: every mistake gets one clear line before anything is written, a run
that fails before its first round leaves nothing that blocks the next one, and nothing is accepted silently."""

import logging

import numpy as np
import pytest
import torch
from conftest import small_model

from fedloop import FedAvg, Sampler
from fedloop.cli import main
from fedloop.client import ClientApp
from fedloop.data.examples import Examples
from fedloop.data.registry import load_dataset
from fedloop.errors import DataError
from fedloop.loop import federated_metrics
from fedloop.types import Broadcast, Evaluation, Task

FAST = ["--set", "rounds=3", "--set", "checkpoint.every=1", "--set", "client.epochs=1", "--quiet"]


@pytest.mark.parametrize("sets, message", [
    (["strategy.clients_per_round=50"], "strategy.clients_per_round = 50: the run has 20 clients"),
    (["strategy.mu=0.1"], "strategy.mu = 0.1 does not apply to strategy.name = 'fedavg'"),
    (["aggregator.name=bulyan", "aggregator.f=3"], "needs at least 15 updates; 20 clients with this sampler give "
                                                   "rounds of 10"),
    (["data.name=mnist"], "data.path is required for dataset 'mnist'"),
    (["data.name=npz", "data.path=/no/such/file.npz"], "/no/such/file.npz: does not exist (data.path)"),
])
def test_a_mistake_is_one_clear_line_before_any_run_directory_exists(tmp_path, capsys, sets, message):
    args = ["run", "--out", str(tmp_path / "run"), *[a for s in sets for a in ("--set", s)]]
    for _ in range(2):  # and the same command again says the same, not "already holds a run"
        assert main(args) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "run").exists()


def test_a_run_that_fails_before_its_first_round_leaves_the_directory_as_it_found_it(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an npz archive")
    args = ["run", "--set", "data.name=npz", "--set", f"data.path={tmp_path / 'notes.txt'}"]
    assert main([*args, "--out", str(tmp_path / "new")]) == 2
    assert "notes.txt: not an .npz archive; fedloop's npz reader takes the arrays x_train" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # made by the run: removed
    (tmp_path / "empty").mkdir()
    assert main([*args, "--out", str(tmp_path / "empty")]) == 2
    assert list((tmp_path / "empty").iterdir()) == []  # there before: left empty (no .lock, no log.txt)
    assert main(["run", "--out", str(tmp_path / "empty"), *FAST]) == 0  # and the next run takes it without flags


def test_an_npy_file_or_a_text_file_is_not_mistaken_for_an_npz_archive(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(3))
    (tmp_path / "client0.txt").write_text("1,2,3\n")
    for name in ("x.npy", "client0.txt"):
        with pytest.raises(DataError, match=f"{name}: not an .npz archive; .* x_train, y_train, x_test, y_test"):
            load_dataset("npz", tmp_path / name)


def test_the_server_names_a_missing_port_and_a_missing_certificate_folder(tmp_path, capsys):
    assert main(["server", "--address", "127.0.0.1", "--out", str(tmp_path / "s")]) == 2
    assert "--address '127.0.0.1': expected HOST:PORT with a port number" in capsys.readouterr().err
    assert main(["server", "--certs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")]) == 2
    assert f"--certs {tmp_path / 'nowhere'}: no such directory" in capsys.readouterr().err
    assert main(["server", "--set", "server.address=localhost", "--out", str(tmp_path / "s")]) == 2
    assert "server.address = 'localhost'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_corrupted_last_checkpoint_names_the_previous_one_that_reads(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), *FAST]) == 0
    (run / "checkpoints" / "round_0003.safetensors").write_bytes(b"torn")
    assert main(["run", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "round_0003.safetensors: not a readable safetensors file" in err
    assert "the previous checkpoint round_0002.safetensors (round 2) reads: move round_0003.safetensors" in err
    assert (run / "checkpoints" / "round_0003.safetensors").read_bytes() == b"torn"  # nothing removed for the user


def test_a_client_without_local_test_rows_is_not_a_failure_and_is_named_once(caplog):
    strategy = FedAvg(sampler=Sampler(None))
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    app = ClientApp(987, strategy, small_model, torch.nn.functional.cross_entropy, train=Examples.all(x, y),
                    test=Examples.all(x[:0], y[:0]))
    params = dict(small_model().state_dict())
    reply = app.handle(Task(987, 1, "evaluate", Broadcast(1, params, {}, "evaluate"), 0))
    assert reply == Evaluation(987, 1, 0, {})  # (an id no other test uses: the log names each set of clients once)
    full = Evaluation(1, 1, 4, {"loss": 0.5, "accuracy": 0.75})
    with caplog.at_level(logging.INFO, logger="fedloop.loop"):
        for _ in range(3):
            assert federated_metrics([reply, full]) == federated_metrics([full])
    told = [r for r in caplog.records if "have no local test rows" in r.getMessage()]
    assert len(told) == 1 and "1 of 2 clients" in told[0].getMessage()
