"""The gRPC deployment with real server and client processes on loopback."""

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from conftest import blobs, one_thread, options
from safetensors.torch import load_file

from fedloop import Clip, FedAvg, Sampler, Scaffold, SimOptions, load_dataset, simulate
from fedloop.app import model_digest
from fedloop.attacks import AttackFleet, AttackOptions
from fedloop.build import load_config, strategy_from_config
from fedloop.data.examples import Dataset, Examples
from fedloop.data.partition import Partition
from fedloop.experiment import build_fleet
from fedloop.fleet import run
from fedloop.models import model_factory
from fedloop.net import fedloop_pb2 as pb
from fedloop.net import fedloop_pb2_grpc as pb_grpc
from fedloop.net.certs import make_certs
from fedloop.net.client_process import build_app, join_request, receive_task, reply_chunks
from fedloop.net.codec import chunks, decode, encode
from fedloop.run import train
from fedloop.store import load_checkpoint
from fedloop.types import ClientInfo, Failure

pytestmark = pytest.mark.slow

SIZES = [23, 31, 17, 40, 29]
CONFIG = """
seed = 3
rounds = 3
[data]
name = "npz"
path = "{server_data}"
[model]
name = "mlp"
[strategy]
clients_per_round = 4
[client]
epochs = 2
batch_size = 8
lr = 0.1
[eval]
every = 1
federated = true
[server]
address = "127.0.0.1:0"
min_clients = {min_clients}
round_deadline = {deadline}
"""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedloop.cli", *args]


def write_site(root: Path, credentials: int):
    """Client data files, a server holdout, credentials for clients 0..credentials-1: what a real deployment has on
    disk; returns the data they were cut from."""
    data = blobs(n_train=sum(SIZES), n_test=60, dim=6, classes=3, seed=4)
    start = 0
    for c, n in enumerate(SIZES):
        rows = slice(start, start + n)
        np.savez(root / f"client{c}.npz", x_train=data.x_train[rows].numpy(), y_train=data.y_train[rows].numpy(),
                 x_test=data.x_test[c * 10:(c + 1) * 10].numpy(), y_test=data.y_test[c * 10:(c + 1) * 10].numpy())
        start += n
    np.savez(root / "server.npz", x_train=data.x_train[:5].numpy(), y_train=data.y_train[:5].numpy(),
             x_test=data.x_test.numpy(), y_test=data.y_test.numpy())
    make_certs(root / "certs", [str(c) for c in range(credentials)])
    return data


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("net")
    return root, write_site(root, len(SIZES))


def write_config(root: Path, name: str, min_clients: int = len(SIZES), deadline: float = 60, extra: str = "") -> Path:
    path = root / f"{name}.toml"
    path.write_text(CONFIG.format(server_data=root / "server.npz", min_clients=min_clients, deadline=deadline)
                    + extra)
    return path


def start_server(root: Path, config: Path, out: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(cli("server", str(config), "--out", str(out), "--certs", str(root / "certs"), *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    match = re.search(r"listening on port (\d+)", line)
    assert match, line + proc.stdout.read()
    return proc, int(match.group(1))


def start_client(root: Path, port: int, c: int, *extra: str) -> subprocess.Popen:
    """A client process on the CPU (--device cpu: the simulator it is compared with trains there too)."""
    certs = root / "certs"
    return subprocess.Popen(cli("client", "--server", f"127.0.0.1:{port}", "--data", str(root / f"client{c}.npz"),
                                "--token-file", str(certs / f"client-{c}.token"), "--ca-cert", str(certs / "ca.pem"),
                                "--id", str(c), "--threads", "1", "--device", "cpu", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_server_and_five_client_processes_train_over_tls_like_the_simulator(site, tmp_path):
    root, data = site
    config = write_config(root, "e2e")
    server, port = start_server(root, config, tmp_path / "run")
    clients = [start_client(root, port, c) for c in range(len(SIZES))]
    log = finish(server)
    for c in clients:
        assert "the run is over" in finish(c)
    assert "rounds 3" in log and "accuracy" in log
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert f'device = "{here}"' in (tmp_path / "run" / "config.toml").read_text()  # where the server evaluated
    for name in ("config.toml", "metrics.jsonl", "model.safetensors", "summary.json", "curves.png",
                 "checkpoints/round_0003.safetensors", "presence.json"):
        assert (tmp_path / "run" / name).exists(), name
    seen = json.loads((tmp_path / "run" / "presence.json").read_text())  # the dashboard's connected clients
    assert [(c["client"], c["examples"]) for c in seen["clients"]] == list(enumerate(SIZES))
    assert all(0 <= seen["time"] - c["last_seen"] < 60 for c in seen["clients"])
    deployed = load_file(tmp_path / "run" / "model.safetensors")

    sim = simulated_params(data, config, rounds=3)
    assert deployed.keys() == sim.keys()
    for k in deployed:
        assert torch.equal(deployed[k], sim[k]), k


def test_a_client_with_an_unknown_token_is_rejected_before_it_sees_params(site, tmp_path):
    root, _ = site
    server, port = start_server(root, write_config(root, "auth", min_clients=1, deadline=5), tmp_path / "run")
    bad = tmp_path / "bad.token"
    bad.write_text("not-a-token\n")
    proc = subprocess.run(cli("client", "--server", f"127.0.0.1:{port}", "--data", str(root / "client0.npz"),
                              "--token-file", str(bad), "--ca-cert", str(root / "certs" / "ca.pem")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "UNAUTHENTICATED: unknown or revoked client token" in proc.stderr
    from fedloop.dashboard.server import refusals

    for _ in range(50):  # the server's log line, as the dashboard's refusals panel shows it
        if refusals(tmp_path / "run"):
            break
        time.sleep(0.1)
    assert "refused authentication" in refusals(tmp_path / "run")[-1]
    server.kill()
    server.wait()


def test_plaintext_is_refused_off_loopback(site, tmp_path):
    root, _ = site
    proc = subprocess.run(cli("server", str(write_config(root, "plain")), "--insecure", "--address", "0.0.0.0:0",
                              "--tokens", str(root / "certs" / "tokens.txt"), "--out", str(tmp_path / "run")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "loopback only" in proc.stderr


def _stub(root: Path, port: int, c: int):
    creds = grpc.ssl_channel_credentials(root_certificates=(root / "certs" / "ca.pem").read_bytes())
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds)
    token = (root / "certs" / f"client-{c}.token").read_text().strip()
    return pb_grpc.FederationStub(channel), [("authorization", f"Bearer {token}")]


def mlp_digest(root: Path) -> str:
    """The digest of the server's model, which a client sends at join (a hostile one can copy it)."""
    return model_digest(model_factory("mlp", load_dataset("npz", root / "server.npz").spec()))


def served_tasks(stub, meta, raw=False):
    """A client's tasks as (header, tensors) (or the raw bytes), polled like the real client does, until the server
    says done."""
    after = 0
    while True:
        stream = stub.GetTask(pb.TaskRequest(after_seq=after), metadata=meta, timeout=60)
        header = next(stream).header
        if header.status in (pb.POLL_DONE, pb.POLL_FAILED):
            return
        if header.status != pb.POLL_TASK:
            continue
        data = b"".join(c.data for c in stream)
        after = header.seq
        yield header, data if raw else decode(data, "task")


def _upload(stub, meta, header: pb.ReplyHeader, params: dict | None):
    payload = encode(params) if params is not None else b""
    header.size = len(payload)
    return stub.PutReply(iter([pb.ReplyChunk(header=header), *(pb.ReplyChunk(data=p) for p in chunks(payload))]),
                         metadata=meta, timeout=30)


def test_malformed_uploads_are_rejected_with_their_reason_and_the_round_goes_on(site, tmp_path):
    root, _ = site
    server, port = start_server(root, write_config(root, "bad", min_clients=1, deadline=20), tmp_path / "run")
    stub, meta = _stub(root, port, 0)
    stub.Join(pb.JoinRequest(num_examples=SIZES[0], num_test=10, input_shape=[6], num_classes=3,
                             model_digest=mlp_digest(root)), metadata=meta, timeout=30)
    tasks = served_tasks(stub, meta)

    def next_fit():
        for header, params in tasks:
            if header.kind == pb.TASK_FIT:
                return header, params
            ack = _upload(stub, meta, pb.ReplyHeader(round=header.round, kind=pb.REPLY_EVALUATE, num_examples=10,
                                                     metrics={"accuracy": 0.5}, seq=header.seq), None)
            assert ack.accepted, ack.reason
        return None, None

    def fit_reply(header, **kw):
        return pb.ReplyHeader(**{**dict(round=header.round, kind=pb.REPLY_FIT, num_examples=SIZES[0], seq=header.seq),
                                 **kw})

    header, params = next_fit()  # round 1, attempt 1
    ack = _upload(stub, meta, fit_reply(header, seq=header.seq + 100), params)
    assert not ack.accepted and "not open for client 0" in ack.reason
    ack = _upload(stub, meta, fit_reply(header, round=header.round + 1), params)
    assert not ack.accepted and "does not match the task's round" in ack.reason
    ack = _upload(stub, meta, fit_reply(header), params)  # that rejection answered the task and closed the attempt
    assert not ack.accepted and "not open for client 0 (stale" in ack.reason

    header, params = next_fit()  # round 1 again: with no update it failed (min_updates = 1) and is retried
    assert header.round == 1
    ack = _upload(stub, meta, fit_reply(header), {k: torch.full_like(v, float("nan")) for k, v in params.items()})
    assert not ack.accepted and "NaN" in ack.reason

    header, params = next_fit()  # round 1, attempt 3
    ack = _upload(stub, meta, fit_reply(header), {k: torch.zeros(v.shape[0] + 1, *v.shape[1:])
                                                  for k, v in params.items()})
    assert not ack.accepted and "has shape" in ack.reason

    while (got := next_fit()) != (None, None):  # a valid (zero) update for round 1's last attempt and rounds 2, 3
        header, params = got
        ack = _upload(stub, meta, fit_reply(header), {k: torch.zeros_like(v) for k, v in params.items()})
        assert ack.accepted, ack.reason
    finish(server)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["clients"], r["failures"], r.get("failed", False)) for r in rounds] == [
        (1, 0, 1, True), (1, 0, 1, True), (1, 0, 1, True), (1, 1, 0, False), (2, 1, 0, False), (3, 1, 0, False)]


def wait_for_line(proc: subprocess.Popen, text: str, seen: list[str]) -> None:
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} never printed:\n" + "".join(seen))


def past_round_1(root: Path, config: Path, out: Path
                 ) -> tuple[subprocess.Popen, str, list[subprocess.Popen], list[str]]:
    """A server on a fixed free port (so a resumed one can take it over) and all clients, once round 1 is done:
    the server, its address, the clients and the server lines seen so far."""
    address = f"127.0.0.1:{free_port()}"
    server, _ = start_server(root, config, out, "--address", address)
    port = int(address.rsplit(":", 1)[1])
    clients = [start_client(root, port, c) for c in range(len(SIZES))]
    seen: list[str] = []
    wait_for_line(server, "round 1:", seen)
    return server, address, clients, seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(root: Path, config: Path, out: Path, client_args: dict[int, list[str]] | None = None) -> list[dict]:
    """A server and one client process per client file, run to the end; the server's metrics.jsonl rows."""
    server, port = start_server(root, config, out)
    clients = [start_client(root, port, c, *(client_args or {}).get(c, [])) for c in range(len(SIZES))]
    finish(server)
    for c in clients:
        assert "the run is over" in finish(c)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def client_files(data):
    """The data as the client files hold it: (the server's view of the whole set, each client's rows in order)."""
    held_out = Dataset("held-out", data.x_train, data.y_train, data.x_test, data.y_test, 3)
    bounds = np.cumsum([0, *SIZES])
    part = Partition("files", [np.arange(bounds[c], bounds[c + 1]) for c in range(len(SIZES))],
                     [np.arange(c * 10, (c + 1) * 10) for c in range(len(SIZES))], "test")
    return held_out, part


def simulated_params(data, config: Path, rounds: int, attack: AttackOptions | None = None,
                     malicious: frozenset[int] = frozenset(), history: bool = False):
    """The simulator on the clients' partition (each client's rows, in order) and seed, single-threaded like the
    client processes (`--threads 1`), so the float summation order and hence every bit match (with `history`: and
    its per-round records)."""
    cfg = load_config(config)
    if attack is not None:
        return _attacked_params(data, cfg, rounds, attack, malicious)
    held_out, part = client_files(data)
    with one_thread():
        res = simulate(model_factory("mlp", held_out.spec()), held_out, part, strategy_from_config(cfg),
                       options(rounds, cfg.seed, federated=cfg.eval.federated), sim=SimOptions(executor="sequential"))
    return (res.state.params, res.history) if history else res.state.params


def _attacked_params(data, cfg, rounds: int, attack: AttackOptions, malicious: frozenset[int]):
    """simulated_params with `malicious` clients attacking through the simulator's AttackFleet."""
    held_out, part = client_files(data)
    model_fn, strategy = model_factory("mlp", held_out.spec()), strategy_from_config(cfg)
    with one_thread():
        fleet = AttackFleet(build_fleet(held_out, part, strategy, model_fn), attack, malicious)
        return train(fleet, model_fn, strategy, options(rounds, cfg.seed, federated=cfg.eval.federated),
                     test=Examples.all(data.x_test, data.y_test)).state.params


def test_a_killed_client_and_a_stalled_client_cost_their_rounds_and_the_run_goes_on(site, tmp_path):
    root, _ = site
    config = write_config(root, "faults", min_clients=4, deadline=8)
    config.write_text(config.read_text().replace("rounds = 3", "rounds = 4").replace("federated = true",
                                                                                     "federated = false")
                      .replace("clients_per_round = 4", "clients_per_round = 5"))
    server, port = start_server(root, config, tmp_path / "run")
    clients = [start_client(root, port, c) for c in range(4)]
    seen: list[str] = []
    wait_for_line(server, "round 1:", seen)
    clients[3].send_signal(signal.SIGKILL)  # dies mid-run
    clients[2].send_signal(signal.SIGSTOP)  # stalls past round 2's deadline
    wait_for_line(server, "round 2:", seen)
    clients[2].send_signal(signal.SIGCONT)
    log = "".join(seen) + finish(server)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["clients"], r["failures"]) for r in rounds] == [(4, 0), (2, 2), (3, 1), (3, 1)]
    assert "client 3 failed: no reply before the 8 s deadline" in log
    assert re.search(r"refused an upload: task \d+ is not open for client 2 \(stale.*\(client 2, peer ipv4:127", log)
    for c in clients[:3]:
        assert "the run is over" in finish(c)
    clients[3].wait()


def test_a_killed_and_resumed_server_ends_with_the_uninterrupted_model(site, tmp_path):
    """Also with a server-side transform (clipping each update as the server reads it from its spool)."""
    root, data = site
    config = write_config(root, "resume", deadline=30,
                          extra='[[transforms]]\nname = "clip"\nmax_norm = 0.01\nwhere = "server"\n')
    server, address, clients, seen = past_round_1(root, config, tmp_path / "run")
    server.send_signal(signal.SIGKILL)
    server.wait()
    assert (tmp_path / "run" / "checkpoints" / "round_0001.safetensors").exists()
    resumed = subprocess.Popen(cli("server", str(config), "--resume", str(tmp_path / "run"), "--certs",
                                   str(root / "certs"), "--address", address),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = finish(resumed)
    assert "rounds 3" in log
    for c in clients:
        assert "the run is over" in finish(c)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["clipped"] == 1.0 for r in rows)
    final = load_file(tmp_path / "run" / "model.safetensors")
    expected = simulated_params(data, config, 3)
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_mutual_tls_authenticates_clients_by_certificate(site, tmp_path):
    root, _ = site
    certs = root / "certs"
    server, port = start_server(root, write_config(root, "mtls", min_clients=2, deadline=30), tmp_path / "run",
                                "--mtls")
    clients = [subprocess.Popen(cli("client", "--server", f"127.0.0.1:{port}", "--data", str(root / f"client{c}.npz"),
                                    "--ca-cert", str(certs / "ca.pem"), "--cert", str(certs / f"client-{c}.pem"),
                                    "--key", str(certs / f"client-{c}.key"), "--threads", "1"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in (0, 1)]
    # a client without a certificate cannot even complete the TLS handshake
    stranger = subprocess.run(cli("client", "--server", f"127.0.0.1:{port}", "--data", str(root / "client2.npz"),
                                  "--ca-cert", str(certs / "ca.pem"), "--give-up-after", "3"),
                              capture_output=True, text=True, timeout=60)
    assert stranger.returncode == 2 and "no successful call for 3 s" in stranger.stderr
    assert "rounds 3" in finish(server)
    for c in clients:
        assert "the run is over" in finish(c)


def test_a_model_over_100_mb_travels_in_chunks(tmp_path):
    features = 2_600_000  # logistic regression to 10 classes: 26M float32 params, 104 MB
    g = np.random.default_rng(0)
    x = g.normal(size=(4, features)).astype(np.float32)
    y = np.array([0, 9, 3, 5])
    for name in ("client0", "server"):
        np.savez(tmp_path / f"{name}.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    make_certs(tmp_path / "certs", ["0"])
    config = tmp_path / "big.toml"
    config.write_text(f"""
rounds = 1
[data]
name = "npz"
path = "{tmp_path / 'server.npz'}"
[model]
name = "logreg"
[strategy]
clients_per_round = 1
[client]
epochs = 1
batch_size = "full"
lr = 0.1
[eval]
federated = false
[server]
address = "127.0.0.1:0"
min_clients = 1
round_deadline = 120
""")
    server, port = start_server(tmp_path, config, tmp_path / "run")
    client = start_client(tmp_path, port, 0)
    log = finish(server, timeout=300)
    finish(client, timeout=300)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["clients"] == 1 and record["bytes_up"] == record["bytes_down"] > 100_000_000, log
    initial, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "round_0000.safetensors")
    final = load_file(tmp_path / "run" / "model.safetensors")
    assert final["linear.weight"].numel() * 4 > 100_000_000
    assert not torch.equal(final["linear.weight"], initial.params["linear.weight"])


def test_the_checked_in_grpc_code_is_what_the_proto_generates(tmp_path):
    src = Path(__file__).parent.parent / "src"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(src), f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                    str(src / "fedloop" / "net" / "fedloop.proto")], check=True)
    for name in ("fedloop_pb2.py", "fedloop_pb2.pyi", "fedloop_pb2_grpc.py"):
        assert (tmp_path / "fedloop" / "net" / name).read_text() == (src / "fedloop" / "net" / name).read_text(), name


def test_scaffold_clients_keep_their_control_variates_across_a_retried_round_and_a_restart(site, tmp_path):
    """SCAFFOLD over gRPC, each client's control variate on its own disk (--state-dir). Client 2 is driven from
    here with the real ClientApp: it fails round 1's first attempt, so round 1 (min_updates = 5) is retried and
    the four clients that answered must start it again from their state before round 1; and it holds round 2
    open while client 4 is killed and restarted, so rounds 2-3 of client 4 need its state read back from disk.
    The final model must equal the simulator's, bit for bit."""
    root, data = site
    config = write_config(root, "scaffold", deadline=60)
    config.write_text(config.read_text().replace("[strategy]\n", '[strategy]\nname = "scaffold"\n')
                      .replace("clients_per_round = 4", "clients_per_round = 5").replace("federated = true",
                                                                                         "federated = false")
                      + "min_updates = 5\nretries = 2\n")
    server, port = start_server(root, config, tmp_path / "run")
    state = [str(tmp_path / f"state{c}") for c in range(len(SIZES))]
    clients = {c: start_client(root, port, c, "--state-dir", state[c]) for c in (0, 1, 3, 4)}

    stub, meta = _stub(root, port, 2)
    hello = stub.Hello(pb.HelloRequest(), metadata=meta, timeout=30)
    app = build_app(json.loads(hello.settings_json), 2, str(root / "client2.npz"))
    stub.Join(join_request(app), metadata=meta, timeout=30)
    seen: list[str] = []
    restarted = False
    for fits, (header, raw) in enumerate(served_tasks(stub, meta, raw=True), 1):
        if fits == 1:  # round 1, first attempt: a failure, so the round is retried
            failure = Failure(2, header.round, "held back by the test")
            stub.PutReply(reply_chunks(failure, header.seq), metadata=meta, timeout=30)
            continue
        if header.round == 2 and not restarted:  # while round 2 waits for this reply: client 4 dies, comes back
            restarted = True
            clients[4].send_signal(signal.SIGKILL)
            clients[4].wait()
            clients[4] = start_client(root, port, 4, "--state-dir", state[4])
            wait_for_line(server, "client 4 joined", seen)  # the first join (and the second)
            wait_for_line(server, "client 4 joined", seen)
        with one_thread():  # like the client processes (--threads 1), so the bits match the simulator's
            reply = app.handle(receive_task(2, header, raw))
        ack = stub.PutReply(reply_chunks(reply, header.seq), metadata=meta, timeout=30)
        assert ack.accepted, ack.reason
    finish(server)
    for c in clients.values():
        assert "the run is over" in finish(c)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    got = [(r["round"], r["clients"], r.get("failed", False)) for r in rounds]
    # killed after its round-2 reply, client 4 comes back for round 3; killed while training, its task fails at
    # once as "disconnected" and round 2 is run again, the restarted client starting from its state on disk
    assert got in ([(1, 4, True), (1, 5, False), (2, 5, False), (3, 5, False)],
                   [(1, 4, True), (1, 5, False), (2, 4, True), (2, 5, False), (3, 5, False)]), got
    if len(got) == 5:
        assert rounds[2]["failed_clients"] == [{"client": 4, "reason": "disconnected"}]
    assert all((Path(s) / (tmp_path / "run" / "run_id").read_text().strip()).is_dir() for s in state if s[-1] != "2")
    final = load_file(tmp_path / "run" / "model.safetensors")
    expected = simulated_params(data, config, 3)
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_a_round_encodes_the_params_its_tasks_share_once(monkeypatch, tmp_path):
    """Whatever the number of clients, the server holds one encoded copy of a round's params (and extras), and
    its download messages are serialized once."""
    from fedloop.net import fleet as fleet_module
    from fedloop.net.auth import Authenticator
    from fedloop.net.codec import Download
    from fedloop.net.spool import Spool

    calls = []
    monkeypatch.setattr(fleet_module, "encode_download", lambda params, extras: calls.append(1) or Download(0, ()))
    fleet = fleet_module.GrpcFleet(Authenticator({"t": 0}), "{}", "run", Spool(tmp_path / "spool", 1 << 20))
    params = {"w": torch.zeros(3)}
    for strategy in (FedAvg(sampler=Sampler(None)), Scaffold(sampler=Sampler(None))):
        calls.clear()
        state = strategy.init(params, 0)
        tasks = strategy.configure(state, [ClientInfo(c, 5) for c in range(4)])
        replies = run(fleet, tasks, deadline=0.01)
        assert [type(r) for r in replies] == [Failure] * 4 and len(calls) == 1
    fleet.finish()


def test_a_two_stage_strategy_with_an_adaptive_server_step_and_client_clipping_matches_the_simulator(site, tmp_path):
    """Power-of-choice (a probe exchange, then fit) with FedAdam's server step and client-side clipping: the
    clients answer both exchanges of every round, clip before upload (the server checks it), and the final model
    equals the simulator's, bit for bit."""
    root, data = site
    config = write_config(root, "two_stage", extra='[server_opt]\nname = "adam"\nlr = 0.02\n'
                                                  '[[transforms]]\nname = "clip"\nmax_norm = 0.02\n')
    config.write_text(config.read_text().replace("[strategy]\n", '[strategy]\nname = "power_of_choice"\n'
                                                               'candidates = 4\n')
                      .replace("clients_per_round = 4", "clients_per_round = 2"))
    rounds = deploy(root, config, tmp_path / "run")
    assert [len(r["selected"]) for r in rounds] == [2, 2, 2] and all(r["clipped"] == 1.0 for r in rounds)
    assert all(r["update_norm"] > 0.02 for r in rounds)
    deployed = load_file(tmp_path / "run" / "model.safetensors")
    expected = simulated_params(data, config, 3)
    assert all(torch.equal(deployed[k], expected[k]) for k in expected)
    sim_rounds = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert sim_rounds["rounds"] == 3


def test_a_client_silent_past_the_liveness_timeout_is_not_asked_again(site, tmp_path):
    """Client 2 is killed after round 1: round 2 waits for it until the deadline, round 3 no longer selects it."""
    root, _ = site
    config = write_config(root, "liveness", min_clients=3, deadline=10, extra="liveness_timeout = 6.5\n")
    config.write_text(config.read_text().replace("federated = true", "federated = false")
                      .replace("clients_per_round = 4", "clients_per_round = 5"))
    server, port = start_server(root, config, tmp_path / "run")
    clients = [start_client(root, port, c) for c in range(3)]
    seen: list[str] = []
    wait_for_line(server, "round 1:", seen)
    clients[2].send_signal(signal.SIGKILL)
    finish(server)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["selected"], r["clients"], r["failures"]) for r in rounds] == [
        ([0, 1, 2], 3, 0), ([0, 1, 2], 2, 1), ([0, 1], 2, 0)]
    assert rounds[1]["seconds"] > 9 and rounds[2]["seconds"] < 5  # round 3 does not wait for the dead client
    for c in clients[:2]:
        assert "the run is over" in finish(c)


def test_a_client_answers_several_open_tasks_in_turn_over_grpc(site, tmp_path):
    """The gRPC fleet holds two open tasks for one client (two stages of one round); the client gets them oldest
    first and both replies are collected."""
    from fedloop.net.auth import Authenticator, read_tokens
    from fedloop.net.fleet import GrpcFleet
    from fedloop.net.server import start_server as serve_fleet
    from fedloop.net.spool import Spool
    from fedloop.types import Broadcast, Evaluation, Task

    root, _ = site
    fleet = GrpcFleet(Authenticator(read_tokens(root / "certs" / "tokens.txt")), "{}", "run",
                      Spool(tmp_path / "spool", 1 << 20))
    server = serve_fleet(fleet, "127.0.0.1:0", cert_dir=root / "certs", insecure=False)
    try:
        stub, meta = _stub(root, server.port, 0)
        stub.Join(pb.JoinRequest(num_examples=SIZES[0], num_test=10), metadata=meta, timeout=30)
        params = {"w": torch.zeros(4)}
        fleet.submit([Task(0, 1, "evaluate", Broadcast(0, params, {}, "first"), 1, {"split": "train"}),
                      Task(0, 1, "evaluate", Broadcast(0, params, {}, "second"), 2)])
        seen = []
        for header, tensors in served_tasks(stub, meta):
            seen.append((header.stage, header.seed, dict(header.config)))
            ack = _upload(stub, meta, pb.ReplyHeader(round=1, kind=pb.REPLY_EVALUATE, num_examples=5,
                                                     metrics={"loss": float(header.seed)}, seq=header.seq), None)
            assert ack.accepted and torch.equal(tensors["w"], params["w"])
            if len(seen) == 2:
                break
        assert [(s, seed) for s, seed, _ in seen] == [("first", 1), ("second", 2)]
        assert seen[0][2]["split"].text == "train"
        replies = fleet.collect(until=time.monotonic() + 10)
        assert sorted(r.metrics["loss"] for r in replies if isinstance(r, Evaluation)) == [1.0, 2.0]
        assert fleet.traffic()[0] > 0
    finally:
        fleet.finish()
        server.stop(grace=1)


def test_a_stopped_server_leaves_its_clients_waiting_and_resumes_to_the_uninterrupted_model(site, tmp_path):
    """SIGTERM (or Ctrl-C) on the server: it writes its files and stops without telling the clients the run is
    over; they keep reconnecting, and the resumed server ends with the simulator's model."""
    root, data = site
    config = write_config(root, "pause", deadline=30)
    server, address, clients, seen = past_round_1(root, config, tmp_path / "run")
    server.send_signal(signal.SIGTERM)
    out, _ = server.communicate(timeout=60)
    assert server.returncode == 130 and "stop interrupted" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted"
    time.sleep(2)
    assert all(c.poll() is None for c in clients)  # still waiting for the server to come back
    changed = subprocess.run(cli("server", str(config), "--resume", str(tmp_path / "run"), "--certs",
                                 str(root / "certs"), "--address", address, "--set", "client.lr=0.5"),
                             capture_output=True, text=True, timeout=60)
    assert changed.returncode == 2 and "client.lr differ from its config.toml" in changed.stderr
    resumed = subprocess.Popen(cli("server", str(config), "--resume", str(tmp_path / "run"), "--certs",
                                   str(root / "certs"), "--address", address),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = finish(resumed)
    assert "rounds 3" in out and "waiting for 5 clients; not back yet: clients 0, 1, 2, 3, 4" in out
    for c in clients:
        assert "the run is over" in finish(c)
    final = load_file(tmp_path / "run" / "model.safetensors")
    expected = simulated_params(data, config, 3)
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_a_client_whose_data_the_model_cannot_take_is_refused_at_join(site, tmp_path):
    root, _ = site
    np.savez(tmp_path / "wide.npz", x_train=np.zeros((9, 7), np.float32), y_train=np.zeros(9, np.int64),
             x_test=np.zeros((2, 7), np.float32), y_test=np.zeros(2, np.int64))
    np.savez(tmp_path / "labels.npz", x_train=np.zeros((9, 6), np.float32), y_train=np.arange(9),
             x_test=np.zeros((2, 6), np.float32), y_test=np.zeros(2, np.int64))
    server, port = start_server(root, write_config(root, "shapes", min_clients=1), tmp_path / "run")
    certs = root / "certs"
    for data, needle in ((tmp_path / "wide.npz", "the client's examples have shape (7,); the model takes (6,)"),
                         (tmp_path / "labels.npz", "the client's labels go up to 8; the model has 3 classes")):
        proc = subprocess.run(cli("client", "--server", f"127.0.0.1:{port}", "--data", str(data), "--token-file",
                                  str(certs / "client-0.token"), "--ca-cert", str(certs / "ca.pem")),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    server.kill()
    server.wait()


def test_a_client_says_when_it_cannot_reach_the_server_and_gives_up_on_time(site):
    root, _ = site
    certs = root / "certs"
    start = time.monotonic()
    proc = subprocess.run(cli("client", "--server", f"127.0.0.1:{free_port()}", "--data", str(root / "client0.npz"),
                              "--token-file", str(certs / "client-0.token"), "--ca-cert", str(certs / "ca.pem"),
                              "--give-up-after", "3"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot reach the server" in proc.stderr
    # without --give-up-after's cut the client would retry for its default 600 s; the slack is for a loaded machine
    assert "no successful call for 3 s" in proc.stderr and time.monotonic() - start < 3 + 30, proc.stderr
    proc = subprocess.run(cli("client", "--server", "localhost", "--data", str(root / "client0.npz"), "--insecure"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--server 'localhost': expected HOST:PORT" in proc.stderr


def test_a_client_speaking_the_wrong_protocol_is_told_which_one_the_server_speaks(site, tmp_path):
    """--insecure against a TLS server, and TLS against a plaintext one: one clear error at once, and neither
    side's output carries gRPC's own handshake lines."""
    root, _ = site
    certs = root / "certs"
    config = write_config(root, "protocols", min_clients=1)
    tls, port = start_server(root, config, tmp_path / "tls")
    plain = subprocess.Popen(cli("server", str(config), "--insecure", "--tokens", str(certs / "tokens.txt"),
                                 "--out", str(tmp_path / "plain")),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    plain_port = int(re.search(r"listening on port (\d+)", plain.stdout.readline()).group(1))
    token = ["--data", str(root / "client0.npz"), "--token-file", str(certs / "client-0.token")]
    insecure = subprocess.run(cli("client", "--server", f"127.0.0.1:{port}", "--insecure", *token),
                              capture_output=True, text=True, timeout=60)
    assert insecure.returncode == 2 and "the server speaks TLS: give --ca-cert" in insecure.stderr, insecure.stderr
    wrong = subprocess.run(cli("client", "--server", f"127.0.0.1:{plain_port}", "--ca-cert", str(certs / "ca.pem"),
                               *token), capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "the server speaks plaintext" in wrong.stderr, wrong.stderr
    for server in (tls, plain):
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
        assert ".cc:" not in out and "Handshake" not in out, out
    assert ".cc:" not in insecure.stderr + wrong.stderr


def test_certs_are_not_overwritten_by_accident(tmp_path):
    make_certs(tmp_path / "c", ["0"])
    assert (tmp_path / "c" / ".gitignore").read_text().endswith("*\n") and (tmp_path / "c-ca" / ".gitignore").exists()
    again = subprocess.run(cli("certs", str(tmp_path / "c"), "--clients", "2"), capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 2 and "ca.pem: already exists" in again.stderr
    none = subprocess.run(cli("certs", str(tmp_path / "d"), "--clients", "0"), capture_output=True, text=True,
                          timeout=60)
    assert none.returncode == 2 and "--clients must be at least 1" in none.stderr
    forced = subprocess.run(cli("certs", str(tmp_path / "c"), "--clients", "2", "--force"), capture_output=True,
                            text=True, timeout=60)
    assert forced.returncode == 0 and len((tmp_path / "c" / "tokens.txt").read_text().splitlines()) == 2


def test_a_central_dp_run_with_adaptive_clipping_over_grpc_matches_the_simulator(site, tmp_path):
    """DP-FedAvg with adaptive clipping: the server sends each round's clip norm in the tasks, clients clip before
    upload and report the clipped bit, the server noises the sum and the count and accounts epsilon, and the final
    model equals the simulator's, bit for bit."""
    root, data = site
    config = write_config(root, "central_dp", extra='[privacy]\nmode = "central"\nsecure_noise = false\n'
                                                    'clipping = "adaptive"\n'
                                                    'clip = 0.05\nnoise_multiplier = 0.8\ncount_stddev = 1.0\n')
    rounds = deploy(root, config, tmp_path / "run")
    assert [r["epsilon"] for r in rounds] == sorted(r["epsilon"] for r in rounds) and rounds[0]["epsilon"] > 0
    assert len({r["clip_norm"] for r in rounds}) == len(rounds)  # the clip norm moves every round
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epsilon"] == rounds[-1]["epsilon"] and summary["privacy"]["mode"] == "central"
    deployed = load_file(tmp_path / "run" / "model.safetensors")
    expected = simulated_params(data, config, 3)
    assert all(torch.equal(deployed[k], expected[k]) for k in expected)


def test_dp_sgd_clients_clip_and_noise_every_example_in_their_own_process_like_the_simulator(site, tmp_path):
    """Sample-level DP-SGD: the per-example clipping and noise run inside each client process (the server only
    accounts), and in the research setting (seeded noise, which test clients accept with --accept-seeded-noise)
    the final model equals the simulator's, bit for bit."""
    root, data = site
    config = write_config(root, "dp_sgd", extra='[privacy]\nmode = "dp-sgd"\nclip = 0.5\nnoise_multiplier = 1.1\n'
                                                'secure_noise = false\n')
    rounds = deploy(root, config, tmp_path / "run", {c: ["--accept-seeded-noise"] for c in range(len(SIZES))})
    assert all(r["epsilon"] > 0 for r in rounds) and rounds[-1]["epsilon"] > rounds[0]["epsilon"]
    deployed = load_file(tmp_path / "run" / "model.safetensors")
    expected = simulated_params(data, config, 3)
    assert all(torch.equal(deployed[k], expected[k]) for k in expected)


def test_a_client_process_that_boosts_its_updates_is_contained_by_the_servers_median(site, tmp_path):
    """One client process sends its update x50 (`fedloop client --attack scaled`); the server's coordinate-wise
    median keeps the model where the simulator with the same attacker puts it, bit for bit, while the mean under
    the same attack is thrown far off."""
    root, data = site
    config = write_config(root, "median", extra='[aggregator]\nname = "median"\n')
    attack = {2: ["--attack", "scaled", "--attack-scale", "50"]}
    deploy(root, config, tmp_path / "run", attack)
    deployed = load_file(tmp_path / "run" / "model.safetensors")
    boost = AttackOptions("scaled", fraction=0.0, scale=50.0)
    expected = simulated_params(data, config, 3, boost, frozenset({2}))
    assert all(torch.equal(deployed[k], expected[k]) for k in expected)
    clean = simulated_params(data, write_config(root, "median-clean", extra='[aggregator]\nname = "median"\n'), 3)
    mean = simulated_params(data, write_config(root, "mean"), 3, boost, frozenset({2}))
    gap = {name: sum(float((p[k] - clean[k]).norm()) for k in clean) for name, p in
           (("median", deployed), ("mean", mean))}
    assert gap["mean"] > 5 * gap["median"], gap


@pytest.mark.parametrize("mode", ["local", "dp-sgd"])
def test_the_server_cannot_remove_a_client_processs_noise(site, tmp_path, mode):
    """Local DP and DP-SGD protect a client from the server. One client process, one round, a server that asks
    for seeded noise (privacy.secure_noise = false) and so knows every seed it could be drawn from: the client
    draws from its own secret stream anyway. The server's best reconstruction, the update the seeded noise would
    give, misses what it received by about the noise itself; and what it received is the clipped update plus
    noise of the configured size."""
    root, data = site
    clip, z = 0.5, 0.8
    config = write_config(root, f"view_{mode}", min_clients=1, extra=f'[privacy]\nmode = "{mode}"\nclip = {clip}\n'
                                                                     f'noise_multiplier = {z}\nsecure_noise = false\n')
    config.write_text(config.read_text().replace("rounds = 3", "rounds = 1").replace("clients_per_round = 4",
                                                                                     "clients_per_round = 1"))
    server, port = start_server(root, config, tmp_path / "run")
    client = start_client(root, port, 0)
    finish(server)
    assert "this client draws its noise from its own secret stream" in finish(client)
    cfg = load_config(config)
    one = Partition("files", [np.arange(SIZES[0])], [np.arange(10)], "test")
    held_out = Dataset("held-out", data.x_train, data.y_train, data.x_test, data.y_test, 3)

    def simulated(strategy):
        with one_thread():
            return simulate(model_factory("mlp", held_out.spec()), held_out, one, strategy, options(1, cfg.seed),
                            sim=SimOptions(executor="sequential")).state.params

    received = load_file(tmp_path / "run" / "model.safetensors")
    guessed = simulated(strategy_from_config(cfg))  # with the seeded noise: all that the server could derive
    gap = torch.cat([(received[k] - guessed[k]).flatten() for k in received])
    if mode == "local":
        # one client, uniform weight, server lr 1: the new model is W0 minus the upload, the clipped update plus
        # N(0, (zC)^2) per entry. The server's guess carries an independent seeded draw, so the two differ by
        # noise of variance 2 (zC)^2 per entry, not by nothing
        tolerance = 6 * math.sqrt(2 / gap.numel())  # the relative standard error of a standard deviation, x 6
        assert float(gap.std()) == pytest.approx(math.sqrt(2) * z * clip, rel=tolerance)
        clean = simulated(replace(strategy_from_config(cfg), transforms=(Clip(clip),)))  # clipped, no noise
        noise = torch.cat([(clean[k] - received[k]).flatten() for k in received])
        assert float(noise.std()) == pytest.approx(z * clip, rel=tolerance)
    else:  # other batches and other noise in every step: far more than float rounding apart
        assert float(gap.abs().max()) > 1e-3


@pytest.mark.parametrize("exits", [
    {1: "secagg-share", 3: "secagg-unmask"},    # after advertising; after its masked input
    {0: "secagg-advertise", 2: "fit"},           # before advertising; after sharing, while it trains
])
def test_secure_aggregation_over_grpc_sums_the_survivors_when_clients_drop_mid_round(site, tmp_path, exits):
    """Five client processes, every one asked; two exit at the given stages of round 1. The server learns the sum
    of the others, and of a client that exited after its masked input (unmasked from its neighbours' shares),
    which is the plain FedAvg round without the clients lost before their masked input, within the stated
    quantisation error; in round 2 the two that left are gone."""
    from conftest import DropAt

    from fedloop.net.client_process import EXIT_AT_STATUS

    root, data = site
    config = write_config(root, "secagg", deadline=30,
                          extra="[secagg]\nenabled = true\nthreshold = 2\nclip_range = 10.0\n")
    config.write_text(config.read_text().replace("rounds = 3", "rounds = 2").replace("clients_per_round = 4",
                                                                                     "clients_per_round = 5")
                      .replace("federated = true", "federated = false"))
    server, port = start_server(root, config, tmp_path / "run")
    clients = [start_client(root, port, c, *(["--exit-at", exits[c]] if c in exits else [])) for c in range(5)]
    log = finish(server)
    for c, proc in enumerate(clients):
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == (EXIT_AT_STATUS if c in exits else 0), out
    lost = sorted(c for c, stage in exits.items() if stage != "secagg-unmask")  # before their masked input
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = rounds[0]
    assert first["clients"] == 5 - len(lost) and first["failures"] == 2, first
    reasons = {f["client"]: f["reason"] for f in first["failed_clients"]}
    for c, stage in exits.items():
        assert f"secure aggregation, {'masked input' if stage == 'fit' else stage}" in reasons[c], reasons
    assert rounds[1]["selected"] == [c for c in range(5) if c not in exits]  # the two that left are gone
    assert "rounds 2" in log

    # the simulator, plain FedAvg, with the lost clients' updates missing in round 1 and both gone in round 2
    cfg = load_config(config)
    plain = replace(strategy_from_config(cfg), secure=None)
    held_out, part = client_files(data)
    model_fn = model_factory("mlp", held_out.spec())

    class Leaving(DropAt):
        def clients(self):  # the clients that exited have left by round 2
            return [c for c in self.inner.clients() if c.client_id not in exits] if self.tasks else \
                self.inner.clients()

    with one_thread():
        fleet = Leaving(build_fleet(held_out, part, plain, model_fn), {"fit": lost}, once=True)
        sim = train(fleet, model_fn, plain, options(2, cfg.seed), test=Examples.all(data.x_test, data.y_test))
    deployed = load_file(tmp_path / "run" / "model.safetensors")
    bound = sum(r["secagg_error_bound"] for r in rounds)  # each round's mean moves the model by at most its bound
    for k, v in sim.state.params.items():
        assert float((deployed[k] - v).abs().max()) <= bound + 1e-5, k


def test_distributed_dp_over_grpc_noises_the_sum_inside_secure_aggregation(site, tmp_path):
    """Five client processes add discrete Gaussian noise before masking: the server's round reports the noise that
    reached the sum (five survivors of a threshold of 3: sqrt(5 / 4) times z) and the epsilon of it."""
    import dp_accounting

    from fedloop.privacy.distributed import ORDERS

    root, _ = site
    z = 1.5
    config = write_config(root, "ddp", extra=f'[secagg]\nenabled = true\nclip_range = 10.0\n[privacy]\n'
                                             f'mode = "distributed"\nnoise_multiplier = {z}\nclip = 1.0\n')
    config.write_text(config.read_text().replace("rounds = 3", "rounds = 2").replace("clients_per_round = 4",
                                                                                     "clients_per_round = 5"))
    rows = deploy(root, config, tmp_path / "run")
    assert [r["clients"] for r in rows] == [5, 5]
    assert [r["noise_multiplier_effective"] for r in rows] == pytest.approx([z * math.sqrt(5 / 4)] * 2, rel=1e-3)
    acc = dp_accounting.rdp.RdpAccountant(list(ORDERS))
    acc.compose(dp_accounting.GaussianDpEvent(rows[0]["noise_multiplier_effective"]), 2)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["privacy"]["mode"] == "distributed"
    assert summary["privacy"]["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)
    assert rows[0]["train_loss"] is None


BASELINES = {  # name: ([strategy] lines, [client] lines)
    "fednova": ('name = "fednova"\n', "momentum = 0.5\n"),
    "feddyn": ('name = "feddyn"\nalpha = 0.1\n', ""),
    "qfedavg": ('name = "qfedavg"\nq = 2.0\n', ""),
    "ditto": ('name = "ditto"\nlam = 0.3\n', ""),
}


@pytest.mark.parametrize("name", list(BASELINES))
def test_the_baselines_over_grpc_end_with_the_simulators_model(site, tmp_path, name):
    """FedNova (normalisers travel as extras and are checked), FedDyn and Ditto (client state kept in the client
    processes), q-FedAvg (losses travel as extras): deployed, each ends with the simulator's model, bit for bit."""
    root, data = site
    strategy, client = BASELINES[name]
    config = write_config(root, name)
    config.write_text(config.read_text().replace("[strategy]\n", "[strategy]\n" + strategy)
                      .replace("[client]\n", "[client]\n" + client).replace("rounds = 3", "rounds = 2")
                      .replace("federated = true", f"federated = {'true' if name == 'ditto' else 'false'}"))
    rounds = deploy(root, config, tmp_path / "run")
    assert [r["clients"] for r in rounds] == [4, 4]
    deployed = load_file(tmp_path / "run" / "model.safetensors")
    expected, history = simulated_params(data, config, 2, history=True)
    assert all(torch.equal(deployed[k], expected[k]) for k in expected)
    if name == "ditto":  # personal models evaluated in the client processes, as in the simulator
        for got, want in zip(rounds, history, strict=True):
            assert got["fed_personal_loss"] == pytest.approx(want["fed_personal_loss"], rel=1e-6)
            assert got["fed_personal_loss"] != pytest.approx(got["fed_loss"], rel=1e-3)


SLOW_APP = '''import os
import time

import torch.nn.functional as F

import fedloop
from fedloop.models import model_factory

CALLS = [0]


def loss(out, y):
    """Every batch takes 30 ms; with FIRST_DELAY set, the first batch of the process takes that many seconds."""
    CALLS[0] += 1
    time.sleep(float(os.environ.get("FIRST_DELAY", "0")) if CALLS[0] == 1 else 0.03)
    return F.cross_entropy(out, y)


app = fedloop.App(model_factory("mlp", {"input_shape": [6], "num_classes": 3}), loss_fn=loss)
'''


def slow_app(root: Path) -> Path:
    app = root / "slow_app.py"
    app.write_text(SLOW_APP)
    return app


def start_with_a_slow_client(root: Path, config: Path, out: Path, delay: float):
    """A server, clients 0..3 and client 4, whose first batch takes `delay` seconds."""
    server, port = start_server(root, config, out)
    clients = [start_client(root, port, c) for c in range(4)]
    certs = root / "certs"
    slow = subprocess.Popen(cli("client", "--server", f"127.0.0.1:{port}", "--data", str(root / "client4.npz"),
                                "--token-file", str(certs / "client-4.token"), "--ca-cert", str(certs / "ca.pem"),
                                "--id", "4", "--threads", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "FIRST_DELAY": str(delay)})
    return server, clients, slow


def test_fedbuff_over_grpc_steps_without_waiting_for_its_slowest_client_and_drops_its_too_old_update(site, tmp_path):
    """Five client processes, one of which takes 4 s over its first task: the server keeps stepping on the other
    four's updates, two per step, and the slow client's update, many versions old by then, is dropped with the
    reason; its later tasks are quick and count. (A step takes about 0.15 s here, so the slow update comes back
    near step 27 of 80: room on both sides for a loaded machine.)"""
    root, _ = site
    config = write_config(root, "fedbuff", extra=f'[app]\nref = "{slow_app(tmp_path)}:app"\n')
    config.write_text(config.read_text().replace("rounds = 3", "rounds = 80").replace("federated = true",
                                                                                      "federated = false")
                      .replace("clients_per_round = 4", 'name = "fedbuff"\nconcurrency = 5\nbuffer_size = 2\n'
                                                        "max_staleness = 3"))
    server, clients, slow = start_with_a_slow_client(root, config, tmp_path / "run", delay=4)
    log = finish(server)
    for c in [*clients, slow]:
        assert "the run is over" in finish(c)
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 80 and all(s["clients"] == 2 and not s.get("failed") for s in steps)
    assert all(s["staleness_max"] <= 3 for s in steps)
    first_slow = next(i for i, s in enumerate(steps) if 4 in s["selected"])
    assert first_slow >= 5  # versions advanced while client 4 trained
    dropped = steps[first_slow]["failed_clients"]
    assert [d["client"] for d in dropped] == [4]
    assert re.fullmatch(r"update dropped: its update is from model version 0, \d+ server steps old; max_staleness is 3",
                        dropped[0]["reason"])
    assert any(4 in s["selected"] and not any(d["client"] == 4 for d in s.get("failed_clients", []))
               for s in steps[first_slow + 1:]), "the slow client's later, quick updates count"
    assert "dropped the update of client 4" in log


def test_an_over_selected_round_over_grpc_ends_at_its_size_and_cancels_the_slow_client_without_blame(site, tmp_path):
    """Five client processes, four needed per round: the slow client's first task is cancelled when the other four
    have replied, recorded as such; its late upload is refused without a strike and it is asked again."""
    root, _ = site
    config = write_config(root, "over", extra=f'[app]\nref = "{slow_app(tmp_path)}:app"\n')
    config.write_text(config.read_text().replace("rounds = 3", "rounds = 4").replace("federated = true",
                                                                                     "federated = false")
                      .replace("clients_per_round = 4", "clients_per_round = 4\nover_selection = 0.25"))
    server, clients, slow = start_with_a_slow_client(root, config, tmp_path / "run", delay=3)
    log = finish(server)
    for c in [*clients, slow]:
        assert "the run is over" in finish(c)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["clients"], len(r["selected"])) for r in rounds] == [(4, 5)] * 4
    assert rounds[0]["failed_clients"] == [{"client": 4, "reason": "cancelled: the round had its 4 replies"}]
    assert "refusing all its calls" not in log and "refused an upload" not in log and "rejected the reply" not in log
