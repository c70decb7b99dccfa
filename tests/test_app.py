"""The user's own code (fedloop.App): loaded by reference, run by `fedloop run`, `fedloop server` and
`fedloop client` (real processes over loopback) exactly as `fedloop.simulate` runs it."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_thread, options
from safetensors.torch import load_file

import fedloop
from fedloop.app import load_app, model_digest
from fedloop.build import load_config, strategy_from_config
from fedloop.data.partition import Partition
from fedloop.errors import CheckpointError, ConfigError, DataError
from fedloop.experiment import load_model, run_config
from fedloop.net.certs import make_certs
from fedloop.net.client_process import build_app, join_request
from fedloop.net.serve import client_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_app.py"
REF = f"{EXAMPLE}:app"
ROWS, TESTS = 40, 15  # each client's training and test examples


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three clients' JSON-lines files and the server's held-out file, in the example's own format."""
    root = tmp_path_factory.mktemp("app")
    example = sys.modules[load_app(REF).model_fn.__module__]
    digits = fedloop.load_dataset("digits")
    for c in range(3):
        tr, te = slice(c * ROWS, (c + 1) * ROWS), slice(c * TESTS, (c + 1) * TESTS)
        example.write_jsonl(root / f"client{c}.jsonl", {"train": (digits.x_train[tr], digits.y_train[tr]),
                                                        "test": (digits.x_test[te], digits.y_test[te])})
    example.write_jsonl(root / "server.jsonl", {"train": (digits.x_train[:2], digits.y_train[:2]),
                                                "test": (digits.x_test[:100], digits.y_test[:100])})
    return root


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("ref, message", [
    ("no_colon", "expected 'package.module:name'"),
    ("missing.py:app", "is not a file"),
    ("fedloop_no_such_module:app", "cannot import fedloop_no_such_module (ModuleNotFoundError"),
    (f"{EXAMPLE}:nothing", "has no 'nothing'"),
    (f"{EXAMPLE}:FEATURES", "is a int, not a fedloop.App"),
])
def test_a_bad_app_reference_names_itself_and_what_is_wrong(ref, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_app(ref)
    assert ref in str(err.value)


def test_an_app_file_that_fails_to_import_is_a_config_error(tmp_path):
    ref = write(tmp_path / "broken.py", "import fedloop\nraise RuntimeError('no GPU here')\n") + ":app"
    with pytest.raises(ConfigError, match=r"cannot import .*broken.py \(RuntimeError: no GPU here\)"):
        load_app(ref)


def test_a_function_returning_an_app_is_an_app_reference(tmp_path):
    ref = write(tmp_path / "factory.py", "import fedloop, torch\n"
                                         "def make():\n"
                                         "    return fedloop.App(lambda: torch.nn.Linear(64, 10))\n") + ":make"
    assert isinstance(load_app(ref).model_fn(), torch.nn.Linear)


def test_the_config_checks_the_shape_of_an_app_reference(tmp_path):
    with pytest.raises(ConfigError, match="app.ref"):
        load_config(None, ["app.ref=not a reference"])


def test_fedloop_run_trains_and_evaluates_the_apps_model_with_its_loss_on_its_data(files, tmp_path):
    cfg = load_config(None, [f"app.ref={REF}", f"data.path={files / 'server.jsonl'}", "rounds=2",
                             "partition.num_clients=2", "strategy.clients_per_round=2", "partition.scheme=iid"])
    result = run_config(cfg, tmp_path / "run")
    model = load_model(tmp_path / "run")  # rebuilt from the reference the model file keeps
    assert type(model).__name__ == "ScaledMLP"
    app = load_app(REF)
    server = app.load_data(str(files / "server.jsonl"))
    with torch.no_grad():
        loss = app.loss_fn(model(server.x_test), server.y_test).item()
        plain = torch.nn.functional.cross_entropy(model(server.x_test), server.y_test).item()
    assert result.metrics["loss"] == pytest.approx(loss, rel=1e-5)  # the app's label-smoothed loss ...
    assert abs(loss - plain) > 1e-3  # ... which is not plain cross-entropy
    assert load_config(tmp_path / "run" / "config.toml").app.ref == REF


def test_an_app_reader_that_fails_names_the_file_and_the_line(files, tmp_path):
    bad = write(tmp_path / "bad.jsonl", (files / "client0.jsonl").read_text().splitlines()[0] + "\n{oops\n")
    cfg = load_config(None, [f"app.ref={REF}", f"data.path={bad}"])
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: expected"):
        run_config(cfg, tmp_path / "run")
    no_path = load_config(None, [f"app.ref={REF}"])
    with pytest.raises(ConfigError, match="data.path: app .* reads its data from a path; set data.path"):
        run_config(no_path, tmp_path / "run2")


def test_load_model_of_an_apps_run_needs_the_app_when_its_file_has_gone(files, tmp_path):
    copy = tmp_path / "gone_app.py"
    copy.write_text(EXAMPLE.read_text())
    cfg = load_config(None, [f"app.ref={copy}:app", f"data.path={files / 'server.jsonl'}", "rounds=1",
                             "partition.num_clients=2", "strategy.clients_per_round=2", "partition.scheme=iid"])
    run_config(cfg, tmp_path / "run")
    load_app.cache_clear()
    copy.unlink()
    with pytest.raises(CheckpointError, match="gone_app.py is not a file"):
        load_model(tmp_path / "run")
    assert type(load_model(tmp_path / "run", load_app(REF))).__name__ == "ScaledMLP"


def test_a_client_builds_the_servers_app_and_reports_its_model_digest(files):
    cfg = load_config(None, [f"app.ref={REF}", f"data.path={files / 'server.jsonl'}"])
    settings = json.loads(client_settings(cfg, {}))
    app = build_app(settings, 0, str(files / "client1.jsonl"))
    assert app.loss_fn is load_app(REF).loss_fn and len(app.train) == ROWS and len(app.test) == TESTS
    assert join_request(app).model_digest == model_digest(load_app(REF).model_fn)
    assert model_digest(load_app(REF).model_fn) != model_digest(lambda: torch.nn.Linear(64, 10))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedloop.cli", *args]


@pytest.mark.slow
def test_server_and_clients_run_the_users_app_bit_identically_to_simulate(files, tmp_path):
    root = files
    make_certs(tmp_path / "certs", ["0", "1", "2", "3"])
    config = write(tmp_path / "app.toml", f"""seed = 5
rounds = 3
[data]
path = "{root / 'server.jsonl'}"
[app]
ref = "{REF}"
[strategy]
clients_per_round = 3
[client]
epochs = 2
batch_size = 8
lr = 0.1
[eval]
federated = true
[server]
address = "127.0.0.1:0"
min_clients = 3
round_deadline = 60
""")
    server = subprocess.Popen(cli("server", config, "--out", str(tmp_path / "run"), "--certs", str(tmp_path / "certs")),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = int(re.search(r"listening on port (\d+)", server.stdout.readline()).group(1))

    def client(c: int, app: str, data: str) -> subprocess.Popen:
        return subprocess.Popen(cli("client", "--server", f"127.0.0.1:{port}", "--data", data, "--app", app,
                                    "--token-file", str(tmp_path / "certs" / f"client-{c}.token"), "--ca-cert",
                                    str(tmp_path / "certs" / "ca.pem"), "--threads", "1", "--give-up-after", "30"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    other = write(tmp_path / "other.py", "import fedloop, torch\nfrom fedloop.app import load_app\n"
                                         "app = fedloop.App(lambda: torch.nn.Sequential(torch.nn.Linear(64, 10)),\n"
                                         f"                  load_data=load_app({REF!r}).load_data)\n")
    stranger = client(3, f"{other}:app", str(root / "client0.jsonl"))
    out, _ = stranger.communicate(timeout=60)
    assert stranger.returncode == 2 and "the client's model differs from the server's" in out
    clients = [client(c, REF, str(root / f"client{c}.jsonl")) for c in range(3)]
    log, _ = server.communicate(timeout=180)
    assert server.returncode == 0 and "rounds 3" in log, log
    for c in clients:
        assert "the run is over" in c.communicate(timeout=60)[0]

    app = load_app(REF)
    parts = [app.load_data(str(root / f"client{c}.jsonl")) for c in range(3)]
    held_out = app.load_data(str(root / "server.jsonl"))
    data = fedloop.Dataset("clients", torch.cat([p.x_train for p in parts]), torch.cat([p.y_train for p in parts]),
                           torch.cat([p.x_test for p in parts]), torch.cat([p.y_test for p in parts]), 10)
    part = Partition("files", [torch.arange(c * ROWS, (c + 1) * ROWS).numpy() for c in range(3)],
                     [torch.arange(c * TESTS, (c + 1) * TESTS).numpy() for c in range(3)], "test")
    cfg = load_config(config)
    with one_thread():
        sim = fedloop.simulate(app, data, part, strategy_from_config(cfg), options(3, cfg.seed, federated=True),
                               sim=fedloop.SimOptions(executor="sequential"))
    deployed = load_file(tmp_path / "run" / "model.safetensors")
    assert deployed.keys() == sim.state.params.keys()
    assert all(torch.equal(deployed[k], sim.state.params[k]) for k in deployed)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["fed_loss"] == pytest.approx(sim.history[-1]["fed_loss"], rel=1e-6)
    model = app.model_fn()
    model.load_state_dict(deployed)
    with torch.no_grad():  # the server evaluates with the app's loss
        assert rows[-1]["loss"] == pytest.approx(app.loss_fn(model(held_out.x_test), held_out.y_test).item(),
                                                 rel=1e-5)
