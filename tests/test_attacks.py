"""Hostile clients against a real server process over loopback (issue 10): each test plays one attack with a raw
gRPC client built on the generated stubs and a valid credential, next to honest client processes, and checks that
the server neither crashes, stalls, lets itself be steered, nor fills its disk."""

import collections
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file
from test_net import (
    CONFIG,
    SIZES,
    cli,
    finish,
    mlp_digest,
    served_tasks,
    start_client,
    start_server,
    wait_for_line,
    write_site,
)

from fedloop.net import fedloop_pb2 as pb
from fedloop.net import fedloop_pb2_grpc as pb_grpc
from fedloop.net.certs import _issue, _key_pem, ca_dir
from fedloop.net.codec import chunks, encode
from fedloop.store import load_checkpoint

pytestmark = pytest.mark.slow

ATTACKERS = range(5, 14)  # credentials beyond the five honest clients'


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    write_site(root, max(ATTACKERS) + 1)
    return root


def config(root: Path, name: str, min_clients: int, deadline: float = 30, **server: object) -> Path:
    path = root / f"{name}.toml"
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in server.items())
    path.write_text(CONFIG.format(server_data=root / "server.npz", min_clients=min_clients, deadline=deadline)
                    + "stream_idle_timeout = 2.0\n" + extra)
    return path


def edit(path: Path, old: str, new: str) -> Path:
    path.write_text(path.read_text().replace(old, new))
    return path


class Raw:
    """A hostile client: the generated stubs, a valid credential, and no fedloop client code. Its channel keeps
    gRPC's 64 KiB flow-control window (no BDP probing), so a download it does not read stalls the server's writes."""

    def __init__(self, root: Path, port: int, cid: int):
        creds = grpc.ssl_channel_credentials(root_certificates=(root / "certs" / "ca.pem").read_bytes())
        self.channel = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.http2.bdp_probe", 0)])
        self.stub = pb_grpc.FederationStub(self.channel)
        self.meta = [("authorization", f"Bearer {(root / 'certs' / f'client-{cid}.token').read_text().strip()}")]
        self.cid = cid
        self.digest = mlp_digest(root)

    def join(self, n: int = SIZES[0], test: int = 10) -> pb.JoinReply:
        return self.stub.Join(pb.JoinRequest(num_examples=n, num_test=test, input_shape=[6], num_classes=3,
                                             model_digest=self.digest), metadata=self.meta, timeout=30)

    def tasks(self):
        return served_tasks(self.stub, self.meta)

    def put(self, header: pb.ReplyHeader, payload: bytes = b"", delay: float = 0.0, size: int | None = None,
            chunk: int = 128 << 10) -> pb.PutAck:
        header.size = len(payload) if size is None else size

        def stream():
            yield pb.ReplyChunk(header=header)
            for part in chunks(payload, chunk):
                time.sleep(delay)
                yield pb.ReplyChunk(data=part)

        return self.stub.PutReply(stream(), metadata=self.meta, timeout=120)

    def zeros(self, header: pb.TaskHeader, params: dict) -> pb.PutAck:
        """An honest-looking (zero) update for a fit task."""
        return self.put(pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=SIZES[0], seq=header.seq),
                        encode({k: torch.zeros_like(v) for k, v in params.items()}))

    def evaluation(self, header: pb.TaskHeader, n: int, **metrics: float) -> pb.PutAck:
        return self.put(pb.ReplyHeader(round=header.round, kind=pb.REPLY_EVALUATE, num_examples=n, metrics=metrics,
                                       seq=header.seq))


def rows(run: Path) -> list[dict]:
    return [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def honest(root: Path, port: int, ids=range(1, 5)) -> list[subprocess.Popen]:
    return [start_client(root, port, c) for c in ids]


def test_1_an_evaluation_with_a_negative_count_is_a_failure_not_a_crash(site, tmp_path):
    server, port = start_server(site, config(site, "crash", min_clients=5), tmp_path / "run")
    clients = honest(site, port)
    attacker = Raw(site, port, 0)
    attacker.join()
    refused = []
    for header, params in attacker.tasks():
        if header.kind == pb.TASK_FIT:
            assert attacker.zeros(header, params).accepted
        else:
            refused.append(attacker.evaluation(header, -sum(SIZES) * 10, loss=0.1, accuracy=0.5).reason)
    log = finish(server)
    assert "rounds 3" in log and refused and all("num_examples" in r and "outside 1..10" in r for r in refused)
    assert all(0 < r["fed_accuracy"] <= 1 for r in rows(tmp_path / "run"))
    for c in clients:
        finish(c)


def test_2_a_client_gets_one_stream_each_way_and_slow_or_stalled_streams_are_cut(site, tmp_path):
    server, port = start_server(site, edit(config(site, "slots", min_clients=2), "federated = true",
                                           "federated = false"), tmp_path / "run")
    attacker = Raw(site, port, 0)
    attacker.join()
    others = honest(site, port, [1])
    header, params = next(iter(attacker.tasks()))
    payload = encode({k: torch.zeros_like(v) for k, v in params.items()})
    fit = pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=SIZES[0], seq=header.seq)
    slow: list[pb.PutAck] = []
    trickle = threading.Thread(target=lambda: slow.append(attacker.put(fit, payload, delay=0.5, chunk=64)))
    trickle.start()
    time.sleep(1.0)
    second = attacker.put(pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=SIZES[0],
                                         seq=header.seq), payload)
    trickle.join(timeout=60)
    assert not second.accepted and "has an upload in flight" in second.reason
    assert not slow[0].accepted and re.search(r"upload (too slow|stalled)", slow[0].reason)
    # a download it does not read: the server cuts it, and the client gets its task again when it asks
    stream = attacker.stub.GetTask(pb.TaskRequest(after_seq=0), metadata=attacker.meta, timeout=60)
    assert next(stream).header.status == pb.POLL_TASK
    with pytest.raises(grpc.RpcError) as cut:
        time.sleep(5)
        for _ in stream:
            pass
    assert "download stalled" in cut.value.details()
    header, params = next(iter(attacker.tasks()))
    assert attacker.zeros(header, params).accepted
    for header, params in attacker.tasks():
        assert attacker.zeros(header, params).accepted
    log = finish(server)
    assert "rounds 3" in log and "cut the download of task" in log
    finish(others[0])


def test_2_eight_hostile_clients_cannot_hold_the_honest_ones_back(site, tmp_path):
    """Eight clients each hold a download open unread and trickle an upload, over and over, as long as the run
    lasts (16 streams: every slot the server used to have); three honest clients still get their tasks and their
    updates in, every round."""
    cfg = edit(config(site, "dos", min_clients=11, deadline=8, min_updates=3, retries=0),
               "federated = true", "federated = false")
    edit(cfg, "clients_per_round = 4", "clients_per_round = 11")
    server, port = start_server(site, cfg, tmp_path / "run")
    stop = threading.Event()

    def stall(cid: int) -> None:
        raw = Raw(site, port, cid)
        raw.join(n=20, test=0)
        while not stop.is_set():
            try:
                stream = raw.stub.GetTask(pb.TaskRequest(after_seq=0), metadata=raw.meta, timeout=60)
                if next(stream).header.status == pb.POLL_DONE:
                    return
                stop.wait(20)  # hold the download open, unread
                stream.cancel()
            except grpc.RpcError:
                stop.wait(0.2)

    def trickle(cid: int) -> None:
        raw = Raw(site, port, cid)
        raw.join(n=20, test=0)
        try:
            for header, params in raw.tasks():
                payload = encode({k: torch.zeros_like(v) for k, v in params.items()})
                raw.put(pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=20, seq=header.seq),
                        payload, delay=0.3, chunk=16)
                if stop.is_set():
                    return
        except grpc.RpcError:
            pass

    threads = [threading.Thread(target=job, args=(cid,), daemon=True)
               for cid in list(ATTACKERS)[:8] for job in (stall, trickle)]
    for t in threads:
        t.start()
    clients = honest(site, port, [1, 2, 3])
    log = finish(server, timeout=300)
    stop.set()
    assert "rounds 3" in log and "cut the download of task" in log and "upload too slow" in log
    for r in rows(tmp_path / "run"):
        assert not r.get("failed") and r["clients"] == 3, r
    for c in clients:
        finish(c)


def test_2_a_client_refused_over_and_over_is_refused_outright_for_a_while(site, tmp_path):
    """Floods of bad uploads cost the server a dictionary lookup per call once the client has been refused too
    often: its calls are refused before any work, and that is logged once."""
    server, port = start_server(site, config(site, "strikes", min_clients=2), tmp_path / "run")
    attacker = Raw(site, port, 0)
    attacker.join()
    junk = os.urandom(1 << 20)
    for _ in range(11):
        ack = attacker.put(pb.ReplyHeader(round=1, kind=pb.REPLY_FIT, num_examples=SIZES[0], seq=7), junk)
        assert not ack.accepted and "is not open for client 0" in ack.reason
    with pytest.raises(grpc.RpcError) as refused:
        attacker.put(pb.ReplyHeader(round=1, kind=pb.REPLY_FIT, num_examples=SIZES[0], seq=7), junk)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError, match="too many refused requests"):
        attacker.join()
    other = Raw(site, port, 1)  # the others are not affected
    assert other.join().client_id == 1
    server.kill()
    log = server.communicate()[0]
    assert log.count("11 refused requests within 60 s: refusing all its calls for 30 s (client 0,") == 1


def test_3_a_client_cannot_claim_more_weight_or_change_its_count(site, tmp_path):
    cfg = edit(config(site, "counts", min_clients=1), "federated = true", "federated = false")
    server, port = start_server(site, cfg, tmp_path / "run")
    greedy = Raw(site, port, 0)
    with pytest.raises(grpc.RpcError, match="sample counts must be 1..1000000"):
        greedy.join(n=10 ** 12)
    for empty, refusal in ((dict(num_classes=3), r"the client's examples have shape \(\); the model takes \(6,\)"),
                           (dict(input_shape=[6]), "the client declares no labels; the model has 3 classes")):
        with pytest.raises(grpc.RpcError, match=refusal):  # a declaration that leaves a check out is refused
            greedy.stub.Join(pb.JoinRequest(num_examples=17, num_test=3, model_digest=greedy.digest, **empty),
                             metadata=greedy.meta, timeout=30)
    greedy.join(n=17, test=3)
    with pytest.raises(grpc.RpcError, match="its counts are fixed, not 10000 and 3"):
        greedy.join(n=10_000, test=3)
    header, params = next(iter(greedy.tasks()))
    ack = greedy.put(pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=10_000, seq=header.seq),
                     encode({k: torch.zeros_like(v) for k, v in params.items()}))
    assert not ack.accepted and "differs from the 17 it joined with" in ack.reason
    registry = tmp_path / "run" / "clients.json"
    written = registry.stat().st_mtime_ns
    refused = 0
    for _ in range(14):  # the same declaration again and again: nothing changes, nothing is written
        try:
            greedy.join(n=17, test=3)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "too many refused requests" in exc.details()
            refused += 1
    assert refused == 3 and registry.stat().st_mtime_ns == written  # the 12th join on is refused for 30 s
    server.kill()
    log = server.communicate()[0]
    assert log.count("client 0 joined again (nothing changed)") == 10
    assert "joined more than 10 times within 60 s: refusing all its calls for 30 s (client 0," in log


def huge(params: dict) -> dict:
    return {k: torch.full_like(v, 3e38) for k, v in params.items()}


def test_3_a_huge_update_is_refused_by_the_norm_bound_and_never_makes_a_non_finite_model(site, tmp_path):
    bounded = edit(config(site, "bounded", min_clients=2, max_update_norm=100.0), "federated = true",
                   "federated = false")
    server, port = start_server(site, bounded, tmp_path / "bounded")
    attacker = Raw(site, port, 0)
    attacker.join(n=1_000_000)
    clients = honest(site, port, [1])
    for header, params in attacker.tasks():
        ack = attacker.put(pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=1_000_000,
                                          seq=header.seq), encode(huge(params)))
        assert not ack.accepted and "exceeds server.max_update_norm = 100" in ack.reason
    assert "rounds 3" in finish(server)
    finish(clients[0])
    final = load_file(tmp_path / "bounded" / "model.safetensors")
    assert all(bool(torch.isfinite(v).all()) and float(v.abs().max()) < 100 for v in final.values())

    # without a bound (the default), the huge update would overflow the round: it is refused, its client named and
    # excluded, the round applied without it, and the run ends normally with the honest clients' model
    unbounded = edit(config(site, "unbounded", min_clients=2), "federated = true", "federated = false")
    server, port = start_server(site, unbounded, tmp_path / "unbounded")
    attacker = Raw(site, port, 0)
    attacker.join(n=1_000_000)
    clients = honest(site, port, [1])
    asked = []
    for header, params in attacker.tasks():
        asked.append(header.round)
        assert attacker.put(pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=1_000_000,
                                           seq=header.seq), encode(huge(params))).accepted
    out = finish(server)
    assert "rounds 3" in out and "client 0 excluded from the run's later rounds" in out and "diverged" not in out
    finish(clients[0])  # the honest client exits 0
    assert asked == [1]  # never asked again, retries included
    first, *later = rows(tmp_path / "unbounded")
    assert first["excluded"] == [0] and "client excluded from the run" in first["failed_clients"][0]["reason"]
    assert all(0 not in r["selected"] and "excluded" not in r for r in later)
    summary = json.loads((tmp_path / "unbounded" / "summary.json").read_text())
    assert summary["stop_reason"] == "rounds" and summary["excluded"] == [0]
    final = load_file(tmp_path / "unbounded" / "model.safetensors")
    assert all(bool(torch.isfinite(v).all()) and float(v.abs().max()) < 100 for v in final.values())
    for path in (tmp_path / "unbounded" / "checkpoints").glob("*.safetensors"):
        state, _ = load_checkpoint(path)
        assert all(float(v.abs().max()) < 100 for v in state.params.values())
        assert state.excluded == ((0,) if state.round >= 1 else ())


def spool_bytes(run: Path) -> int:
    return sum(f.stat().st_size for f in (run / "spool").glob("*")) if (run / "spool").is_dir() else 0


def test_4_uploads_are_checked_before_a_byte_is_spooled_and_the_spool_is_bounded(site, tmp_path):
    run = tmp_path / "run"
    cfg = edit(config(site, "disk", min_clients=1, deadline=5, spool_bytes=400_000), "federated = true",
               "federated = false")
    server, port = start_server(site, cfg, run)
    stranger = Raw(site, port, 13)  # a valid token that never joined
    ack = stranger.put(pb.ReplyHeader(round=1, kind=pb.REPLY_FIT, num_examples=5, seq=12345), os.urandom(30 << 20))
    assert not ack.accepted and "is not open for client 13" in ack.reason and spool_bytes(run) == 0
    attacker = Raw(site, port, 0)
    attacker.join()
    tasks = attacker.tasks()

    def fit(header: pb.TaskHeader) -> pb.ReplyHeader:
        return pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=SIZES[0], seq=header.seq)

    header, _ = next(tasks)
    ack = attacker.put(fit(header), b"", size=10 << 30)
    assert not ack.accepted and "declared size 10737418240 is outside" in ack.reason and spool_bytes(run) == 0
    header, _ = next(tasks)  # that header answered the task (it was malformed); the round's retry asks again
    ack = attacker.put(fit(header), os.urandom(300_000), size=1000)
    assert not ack.accepted and "exceeds its declared 1000 bytes" in ack.reason and spool_bytes(run) == 0
    header, _ = next(tasks)  # the attempt above missed its deadline; the next one
    ack = attacker.put(fit(header), os.urandom(500_000))
    assert not ack.accepted and "the server's spool is full (0 of 400000 bytes)" in ack.reason
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=60)
    assert not (run / "spool").exists()  # a stopped server removes its spool
    # what a killed server leaves (its spool, temporary files of interrupted writes) is cleared when a server
    # starts on the run directory
    (run / "spool").mkdir()
    (run / "spool" / "upload_99.safetensors").write_bytes(b"x" * 1000)
    stale = [run / ".summary.json.abc.tmp", run / "checkpoints" / ".round_0003.safetensors.xyz.tmp"]
    for f in stale:
        f.write_bytes(b"left by a crash")
    resumed = subprocess.Popen(cli("server", str(cfg), "--resume", str(run), "--certs", str(site / "certs")),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert "listening" in resumed.stdout.readline()
    assert list((run / "spool").iterdir()) == [] and not any(f.exists() for f in stale)
    resumed.kill()
    resumed.wait()


def test_5_forged_evaluation_counts_and_metrics_are_refused(site, tmp_path):
    cfg = edit(config(site, "forged", min_clients=5), "rounds = 3", "rounds = 5")
    server, port = start_server(site, cfg, tmp_path / "run")
    clients = honest(site, port)
    attacker = Raw(site, port, 0)
    attacker.join()
    refusals = []
    forged = [dict(n=10 ** 15, accuracy=1.0, loss=0.0), dict(n=10, accuracy=float("nan"), loss=0.0),
              dict(n=10, accuracy=1.5, loss=0.0), dict(n=10, loss=-3.0)]
    for header, params in attacker.tasks():
        if header.kind == pb.TASK_FIT:
            assert attacker.zeros(header, params).accepted
        elif forged:
            spec = forged.pop(0)
            refusals.append(attacker.evaluation(header, spec.pop("n"), **spec).reason)
        else:
            ack = attacker.put(pb.ReplyHeader(round=header.round, kind=pb.REPLY_EVALUATE, num_examples=10,
                                              metrics={"accuracy\nFORGED": 1.0}, seq=header.seq))
            refusals.append(ack.reason)
    finish(server)
    assert len(refusals) == 5 and [bool(re.search(p, r)) for p, r in zip(
        [r"num_examples 1000000000000000 is outside 1..10", r"accuracy = nan is not finite",
         r"accuracy = 1.5 is outside \[0, 1\]", r"loss = -3.0 is negative", r"metric name 'accuracy\\nFORGED'"],
        refusals, strict=False)] == [True] * len(refusals)
    assert all(0 <= r["fed_accuracy"] <= 1 for r in rows(tmp_path / "run"))
    for c in clients:
        finish(c)


def rogue_certificate(root: Path, cid: int) -> tuple[Path, Path]:
    """A certificate the CA signed for a client id it never issued (someone who stole the CA's key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    certs = root / "certs"
    ca_key = serialization.load_pem_private_key((ca_dir(certs) / "ca.key").read_bytes(), None)
    ca_name = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes()).subject
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(f"client-{cid}", key, ca_key, ca_name, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    out = root / "rogue"
    out.mkdir(exist_ok=True)
    (out / f"client-{cid}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"client-{cid}.key").write_bytes(_key_pem(key))
    return out / f"client-{cid}.pem", out / f"client-{cid}.key"


def mtls_client(root: Path, port: int, cert: Path, key: Path, data: str = "client0.npz") -> subprocess.CompletedProcess:
    return subprocess.run(cli("client", "--server", f"127.0.0.1:{port}", "--data", str(root / data), "--ca-cert",
                              str(root / "certs" / "ca.pem"), "--cert", str(cert), "--key", str(key),
                              "--give-up-after", "5"), capture_output=True, text=True, timeout=60)


def test_6_mutual_tls_accepts_only_issued_unrevoked_certificates_and_the_ca_key_stays_apart(site, tmp_path):
    certs = site / "certs"
    allowlist = tmp_path / "allowed.txt"
    allowlist.write_text("".join(line + "\n" for line in (certs / "clients.txt").read_text().splitlines()
                                 if not line.startswith("4 ")))  # client 4 is revoked
    cfg = config(site, "mtls", min_clients=1)
    server, port = start_server(site, cfg, tmp_path / "run", "--mtls", "--allowlist", str(allowlist))
    rogue = mtls_client(site, port, *rogue_certificate(site, 99))
    assert rogue.returncode == 2 and "UNAUTHENTICATED: certificate 'client-99' is not on the allowlist" in rogue.stderr
    revoked = mtls_client(site, port, certs / "client-4.pem", certs / "client-4.key", "client4.npz")
    assert revoked.returncode == 2 and "not on the allowlist (revoked, or never issued)" in revoked.stderr
    server.kill()
    log = server.communicate()[0]
    assert "refused authentication: certificate 'client-99'" in log
    # the CA's key next to the server's certificates: the server refuses to start
    exposed = tmp_path / "exposed"
    exposed.mkdir()
    for name in ("ca.pem", "server.pem", "server.key", "tokens.txt"):
        (exposed / name).write_bytes((certs / name).read_bytes())
    (exposed / "backup.key").write_bytes((ca_dir(certs) / "ca.key").read_bytes())
    proc = subprocess.run(cli("server", str(cfg), "--certs", str(exposed), "--out", str(tmp_path / "r2")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "backup.key: the CA's private key lies next to the server's certificates" \
        in proc.stderr


def test_7_plaintext_is_for_loopback_only_on_both_sides(site, tmp_path):
    proc = subprocess.run(cli("client", "--server", "10.9.9.9:50051", "--data", str(site / "client0.npz"),
                              "--insecure", "--token-file", str(site / "certs" / "client-0.token")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "allowed on loopback only, not to '10.9.9.9'" in proc.stderr
    server = subprocess.Popen(cli("server", str(config(site, "plain", min_clients=1)), "--insecure", "--address",
                                  "127.0.0.2:0", "--tokens", str(site / "certs" / "tokens.txt"), "--out",
                                  str(tmp_path / "run")), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert "listening on port" in server.stdout.readline()  # 127.0.0.0/8 is loopback
    server.kill()
    server.wait()


def test_8_refusals_are_logged_with_the_peer_and_client_strings_cannot_forge_log_lines(site, tmp_path):
    cfg = edit(config(site, "audit", min_clients=1), "federated = true", "federated = false")
    server, port = start_server(site, cfg, tmp_path / "run")
    stranger = Raw(site, port, 0)
    stranger.meta = [("authorization", "Bearer not-a-token-s3cr3t")]
    with pytest.raises(grpc.RpcError, match="unknown or revoked client token"):
        stranger.join()
    attacker = Raw(site, port, 0)
    attacker.join()
    for header, _ in attacker.tasks():
        attacker.put(pb.ReplyHeader(round=header.round, kind=pb.REPLY_FAILURE, seq=header.seq,
                                    reason="boom\nWARNING fedloop.loop: round 9: everything is fine"))
        break
    seen: list[str] = []
    wait_for_line(server, "client 0 failed", seen)
    header, params = next(iter(attacker.tasks()))  # the retried round's task, answered with an oversized message
    payload = encode({k: torch.zeros_like(v) for k, v in params.items()})
    with pytest.raises(grpc.RpcError, match="RESOURCE_EXHAUSTED"):  # a message above gRPC's limit ends the call
        attacker.put(pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=SIZES[0], seq=header.seq),
                     payload + bytes(2 << 20), size=len(payload), chunk=len(payload) + (2 << 20))
    wait_for_line(server, "refused an upload", seen)
    server.kill()
    log = "".join(seen) + server.communicate()[0]
    assert re.search(r"refused an upload: upload ended after 0 of its declared \d+ bytes \(client 0, peer "
                     r"ipv4:127\.0\.0\.1:\d+\)", log)  # the peer, read when the call began
    assert re.search(r"refused authentication: unknown or revoked client token \(client unknown, peer "
                     r"ipv4:127\.0\.0\.1:\d+\)", log)
    assert "s3cr3t" not in log
    assert "boom\\nWARNING fedloop.loop: round 9" in log
    assert not any(line.startswith("WARNING fedloop.loop: round 9") for line in log.splitlines())


def test_9_one_server_per_address_and_one_writer_per_run_directory(site, tmp_path):
    cfg = config(site, "ports", min_clients=1)
    first, port = start_server(site, cfg, tmp_path / "a")
    second = subprocess.run(cli("server", str(cfg), "--certs", str(site / "certs"), "--address", f"127.0.0.1:{port}",
                                "--out", str(tmp_path / "b")), capture_output=True, text=True, timeout=60)
    assert second.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in second.stderr
    assert second.stderr.count("\n") == 1 and "add_port" not in second.stderr  # fedloop's line, no gRPC chatter
    assert not (tmp_path / "b").exists()  # a server that never started leaves no run directory
    twin = subprocess.run(cli("server", str(cfg), "--certs", str(site / "certs"), "--resume", str(tmp_path / "a")),
                          capture_output=True, text=True, timeout=60)
    assert twin.returncode == 2 and f"another process (pid {first.pid}) is writing this run directory" in twin.stderr
    first.kill()
    first.wait()


def test_10_dead_and_silent_clients_are_dropped_and_a_failed_run_says_so(site, tmp_path):
    start = time.monotonic()
    proc = subprocess.run(cli("server", str(config(site, "noresume", min_clients=1)), "--certs", str(site / "certs"),
                              "--resume", str(tmp_path / "empty")), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "empty: no run to resume here" in proc.stderr
    assert time.monotonic() - start < 30  # it did not wait for clients first
    cfg = edit(config(site, "silent", min_clients=2, deadline=3, max_missed=2, min_updates=1),
               "federated = true", "federated = false")
    edit(cfg, "rounds = 3", "rounds = 5")
    server, port = start_server(site, cfg, tmp_path / "run")
    silent = Raw(site, port, 0)
    silent.join()
    clients = honest(site, port, [1])
    polling = threading.Event()

    def poll_forever():  # polls and downloads its tasks, never answers
        after = 0
        while not polling.is_set():
            try:
                stream = silent.stub.GetTask(pb.TaskRequest(after_seq=after), metadata=silent.meta, timeout=30)
                header = next(stream).header
                if header.status in (pb.POLL_DONE, pb.POLL_FAILED):
                    return
                after = max(after, header.seq)
                list(stream)
            except grpc.RpcError:
                time.sleep(0.2)

    thread = threading.Thread(target=poll_forever, daemon=True)
    thread.start()
    log = finish(server)
    polling.set()
    selected = [r["selected"] for r in rows(tmp_path / "run")]
    assert selected[:2] == [[0, 1], [0, 1]] and all(s == [1] for s in selected[2:])
    finish(clients[0])
    # a run that fails tells its clients so, and they exit non-zero
    failing = edit(config(site, "failing", min_clients=2, min_updates=2, retries=0), "federated = true",
                   "federated = false")
    server, port = start_server(site, failing, tmp_path / "failing")
    victim = start_client(site, port, 1, "--give-up-after", "30")
    attacker = Raw(site, port, 0)
    attacker.join()
    try:
        for header, _ in attacker.tasks():  # the other client sends garbage: the round fails, the run stops
            attacker.put(pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=SIZES[0],
                                        seq=header.seq), b"not safetensors")
    except grpc.RpcError:
        pass  # the server is gone
    out, _ = server.communicate(timeout=60)
    assert server.returncode == 2 and "round 1 failed" in out
    out, _ = victim.communicate(timeout=60)
    assert victim.returncode == 2 and "the run failed on the server" in out, (log, out)


def test_11_a_client_learns_only_what_it_needs(site, tmp_path):
    server, port = start_server(site, config(site, "hello", min_clients=1), tmp_path / "run")
    hello = Raw(site, port, 0).stub.Hello(pb.HelloRequest(), metadata=Raw(site, port, 0).meta, timeout=30)
    settings = json.loads(hello.settings_json)
    assert str(site) not in hello.settings_json
    assert set(settings["config"]) == {"seed", "data", "model", "app", "strategy", "client", "transforms", "privacy",
                                       "secagg"}
    assert set(settings["config"]["data"]) == {"name", "test_fraction", "split", "label_column"}
    with pytest.raises(grpc.RpcError, match="unknown or revoked client token"):
        pb_grpc.FederationStub(Raw(site, port, 0).channel).Hello(
            pb.HelloRequest(), metadata=[("authorization", "Bearer nope")], timeout=30)
    server.kill()
    server.wait()


def test_12_a_flood_of_unauthenticated_calls_is_throttled_and_adds_little_to_the_log(site, tmp_path):
    """10^4 calls with a forged token from one address while the server waits for its clients, and more during the
    rounds: the first few are logged, then the address's unauthenticated calls are throttled (they wait, are
    refused and are counted in one summary line), and honest clients from the same address train all the same."""
    run = tmp_path / "run"
    server, port = start_server(site, edit(config(site, "flood", min_clients=2), "federated = true",
                                           "federated = false"), run)
    creds = grpc.ssl_channel_credentials(root_certificates=(site / "certs" / "ca.pem").read_bytes())
    stubs = [pb_grpc.FederationStub(grpc.secure_channel(f"127.0.0.1:{port}", creds,
                                                        options=[("grpc.use_local_subchannel_pool", 1)]))
             for _ in range(4)]
    codes: collections.Counter = collections.Counter()
    window, lock, stop = threading.BoundedSemaphore(400), threading.Lock(), threading.Event()

    def ended(call):
        with lock:
            codes[call.code()] += 1
        window.release()

    def flood():
        i = 0
        while not stop.is_set():
            window.acquire()
            call = stubs[i % 4].Hello.future(pb.HelloRequest(), metadata=[("authorization", "Bearer forged")],
                                             timeout=60)
            call.add_done_callback(ended)
            i += 1

    flooding = threading.Thread(target=flood, daemon=True)
    flooding.start()
    while sum(codes.values()) < 10_000:
        time.sleep(0.2)
    clients = honest(site, port, [1, 2])
    out = finish(server)
    stop.set()
    flooding.join()
    for _ in range(400):
        window.acquire()
    for c in clients:
        finish(c)
    assert "rounds 3" in out and all(not r.get("failed") and r["clients"] == 2 for r in rows(run))
    assert codes[grpc.StatusCode.UNAUTHENTICATED] >= 11 and codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= 9_000
    log = (run / "log.txt").read_text()
    assert (run / "log.txt").stat().st_size < 100_000 and log.count("refused authentication") <= 10
    assert "refused authentications from ipv4:127.0.0.1 within 60 s" in log
    assert re.search(r"\d+ more refused calls of unauthenticated callers at ipv4:127\.0\.0\.1", log)


def test_13_half_open_connections_are_closed_within_the_handshake_bound_and_capped(site, tmp_path):
    """TCP connections that never start a TLS handshake are closed after server.stream_idle_timeout (2 s here), and
    beyond server.max_connections none is held: honest clients get in once the bound has passed."""
    import socket

    run = tmp_path / "run"
    server, port = start_server(site, config(site, "halfopen", min_clients=2, max_connections=20), run)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
    clients = honest(site, port, [1, 2])
    time.sleep(4)
    closed = 0
    for s in held:
        s.settimeout(1.0)
        try:
            closed += s.recv(1) == b""  # the server closed it
        except ConnectionResetError:
            closed += 1
        except TimeoutError:
            pass  # still open
        s.close()
    assert closed == 60
    assert "rounds 3" in finish(server)
    for c in clients:
        finish(c)


def test_14_a_client_killed_while_it_trains_fails_its_task_at_once(site, tmp_path):
    """kill -9 on a client in the middle of its training: the call it holds while it works breaks, and its task
    fails at once as "disconnected" instead of after the round deadline (60 s here)."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import time\nimport torch\n_forward = torch.nn.Linear.forward\n\n\n"
        "def forward(self, x):\n    time.sleep(1.0)\n    return _forward(self, x)\n\n\n"
        "torch.nn.Linear.forward = forward\n")
    run = tmp_path / "run"
    cfg = edit(config(site, "killed", min_clients=3, deadline=60), "federated = true", "federated = false")
    edit(cfg, "clients_per_round = 4", "clients_per_round = 3")
    server, port = start_server(site, cfg, run)
    clients = honest(site, port, [1, 2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(slow), os.environ.get("PYTHONPATH", "")])}
    certs = site / "certs"
    victim = subprocess.Popen(cli("client", "--server", f"127.0.0.1:{port}", "--data", str(site / "client3.npz"),
                                  "--token-file", str(certs / "client-3.token"), "--ca-cert", str(certs / "ca.pem"),
                                  "--threads", "1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wait_for_line(victim, "joined run", [])
    time.sleep(4)  # round 1 has begun: the victim trains (each of its forward passes takes a second)
    killed = time.monotonic()
    victim.kill()
    victim.wait()
    out = finish(server)
    for c in clients:
        finish(c)
    first = rows(run)[0]
    assert "client 3 disconnected" in out and "rounds 3" in out
    assert [f["reason"] for f in first["failed_clients"]] == ["disconnected"] and first["clients"] == 2
    assert time.monotonic() - killed < 45  # three rounds, none waiting out the 60 s deadline
