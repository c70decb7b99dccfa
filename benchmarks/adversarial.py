"""The gRPC deployment under attack: N honest light clients and K hostile ones against one server, each run
against the same run without attackers (issue 10's measure).

Honest clients are threads (as in benchmarks/net.py) that answer every task with a zero update of a 1M-parameter
model (4 MB). Hostile clients, with valid credentials unless said otherwise, rotate through the behaviours given
(--kinds):
  stall     take a task and never read its download (held open 30 s, again and again);
  trickle   upload the task's update at 5 KB/s;
  oversize  claim 10^12 examples, then declare 10 GB uploads and send 1 MB uploads for tasks it does not have;
  flood     answer every task at once with garbage of the right size, and send uploads for tasks it does not have;
  huge      answer every task with a finite update of the right shape holding 3e38 in every value (issue 28);
  stranger  no credential: call Hello with a forged token, 200 calls in flight, for as long as the run lasts.
Per K it prints the honest clients' time per round (from receiving a task's header to the server's ack of their
update: download, work and upload; median over clients and rounds), the server's seconds per round (it waits for
hostile clients' missing replies until the round deadline, until they are dropped for missing tasks), the server's
peak RSS, the largest size of its upload spool (sampled every 20 ms) against its cap, the size of its log.txt, the
calls the attackers made, and how the run ended.

    python benchmarks/adversarial.py                    # 20 honest, K = 0, 4, 8, the first four kinds
    python benchmarks/adversarial.py --honest 10 --attackers 0 8 --rounds 3
    python benchmarks/adversarial.py --honest 10 --attackers 0 1 4 --kinds huge
    python benchmarks/adversarial.py --honest 10 --attackers 0 1 4 --kinds stranger
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from net import FEATURES, _import_protocol

SPOOL_BYTES = 256 << 20
KINDS = ("stall", "trickle", "oversize", "flood", "huge", "stranger")
DEFAULT_KINDS = KINDS[:4]


def _stub(port: int, certs: Path, cid: int, bdp: bool = True, own: bool = False):  # noqa: ANN202
    import grpc

    pb, pb_grpc = _import_protocol()
    creds = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    options = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
    if not bdp:  # keep the 64 KiB window: an unread download stalls the server's writes
        options.append(("grpc.http2.bdp_probe", 0))
    if own:  # a connection of its own, as from another machine
        options.append(("grpc.use_local_subchannel_pool", 1))
    stub = pb_grpc.FederationStub(grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options))
    return pb, stub, [("authorization", f"Bearer {(certs / f'client-{cid}.token').read_text().strip()}")]


def _server(config: str, out: str, certs: str, queue: mp.Queue) -> None:
    """The server as `fedloop server` runs it, with its log.txt (INFO and up), reporting its rounds and RSS."""
    import logging
    import resource

    from fedloop.build import load_config
    from fedloop.net.serve import serve
    from fedloop.progress import log_to
    from fedloop.store import run_directory

    logging.getLogger().setLevel(logging.INFO)
    with run_directory(out), log_to(Path(out)):
        result = serve(load_config(config), out, cert_dir=certs, tokens=None, on_listen=queue.put)
    queue.put({"seconds": [r["seconds"] for r in result.history], "stop": result.stop_reason,
               "excluded": result.summary.get("excluded", []),
               "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _join_request(pb, digest: str):  # noqa: ANN001, ANN202
    """An honest declaration for the benchmark's logreg model (FEATURES features, labels 0..9)."""
    return pb.JoinRequest(num_examples=10, input_shape=[FEATURES], num_classes=10, model_digest=digest)


def _upload(pb, stub, meta, header, payload: bytes, chunk: int = 128 << 10, delay: float = 0.0,  # noqa: ANN001
            size: int | None = None):  # noqa: ANN202
    def parts():
        yield pb.ReplyChunk(header=pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=10,
                                                  size=len(payload) if size is None else size, seq=header.seq))
        for i in range(0, len(payload), chunk):
            if delay:
                time.sleep(delay)
            yield pb.ReplyChunk(data=payload[i:i + chunk])

    return stub.PutReply(parts(), metadata=meta, timeout=300)


def _honest(port: int, certs: Path, cid: int, times: list[float], digest: str) -> None:
    from safetensors.numpy import load, save

    pb, stub, meta = _stub(port, certs, cid)
    stub.Join(_join_request(pb, digest), metadata=meta, timeout=120)
    after = 0
    while True:
        stream = stub.GetTask(pb.TaskRequest(after_seq=after), metadata=meta, timeout=300)
        header = next(stream).header
        if header.status in (pb.POLL_DONE, pb.POLL_FAILED):
            return
        if header.status != pb.POLL_TASK:
            continue
        start = time.monotonic()
        params = load(b"".join(c.data for c in stream))
        _upload(pb, stub, meta, header, save({k: v * 0 for k, v in params.items()}))
        times.append(time.monotonic() - start)
        after = header.seq


def _stranger(port: int, certs: Path, stop: threading.Event, calls: list[int]) -> None:
    """Unauthenticated Hello calls with a forged token, 200 in flight, until `stop`."""
    pb, stub, _ = _stub(port, certs, 0, own=True)
    window = threading.BoundedSemaphore(200)
    while not stop.is_set():
        window.acquire()
        call = stub.Hello.future(pb.HelloRequest(), metadata=[("authorization", "Bearer forged")], timeout=60)
        call.add_done_callback(lambda _: window.release())
        calls.append(1)


def _huge(payload: bytes) -> bytes:
    import numpy as np
    from safetensors.numpy import load, save

    return save({k: np.full_like(v, 3e38) for k, v in load(payload).items()})


def _hostile(port: int, certs: Path, cid: int, kind: str, stop: threading.Event, calls: list[int], digest: str
             ) -> None:
    import grpc

    if kind == "stranger":
        _stranger(port, certs, stop, calls)
        return
    pb, stub, meta = _stub(port, certs, cid, bdp=False)

    def join() -> None:
        if kind == "oversize":
            try:
                stub.Join(pb.JoinRequest(num_examples=10 ** 12), metadata=meta, timeout=60)
            except grpc.RpcError:
                pass
        stub.Join(_join_request(pb, digest), metadata=meta, timeout=60)
        calls.append(1)

    bogus = pb.TaskHeader(round=1, seq=1)
    junk = os.urandom(1 << 20)
    garbage: dict[int, bytes] = {}  # made once per size: the attacker's own work is not what is measured
    while not stop.is_set():
        try:
            join()
            after = 0
            while not stop.is_set():
                stream = stub.GetTask(pb.TaskRequest(after_seq=0 if kind == "stall" else after), metadata=meta,
                                      timeout=60)
                header = next(stream).header
                if header.status in (pb.POLL_DONE, pb.POLL_FAILED):
                    return
                if header.status != pb.POLL_TASK:
                    continue
                after = header.seq
                if kind == "stall":
                    stop.wait(30)
                    stream.cancel()
                    continue
                size = header.size
                if kind == "huge":
                    _upload(pb, stub, meta, header, _huge(b"".join(c.data for c in stream)))
                    calls.append(1)
                    continue
                stream.cancel()
                calls.append(1)
                if kind == "trickle":
                    _upload(pb, stub, meta, header, garbage.setdefault(size, os.urandom(size)), chunk=1024,
                            delay=0.2)
                elif kind == "oversize":
                    _upload(pb, stub, meta, header, b"", size=10 << 30)
                    for _ in range(20):
                        _upload(pb, stub, meta, bogus, junk)
                else:
                    _upload(pb, stub, meta, header, garbage.setdefault(size, os.urandom(size)))
                    for _ in range(20):
                        _upload(pb, stub, meta, bogus, junk)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return
            stop.wait(0.2)  # dropped, cut, refused: join again and go on


def _clients(port: int, certs: str, honest: list[int], hostile: list[int], kinds: list[str], queue: mp.Queue,
             digest: str) -> None:
    times: list[float] = []
    calls: list[int] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_honest, args=(port, Path(certs), c, times, digest)) for c in honest]
    threads += [threading.Thread(target=_hostile, args=(port, Path(certs), c, kinds[i % len(kinds)], stop, calls,
                                                        digest), daemon=True) for i, c in enumerate(hostile)]
    for t in threads:
        t.start()
    for t in threads[:len(honest)]:
        t.join()
    stop.set()
    queue.put((times, len(calls)))


def run(n: int, k: int, rounds: int, root: Path, kinds: list[str]) -> dict:
    import numpy as np

    from fedloop.app import model_digest
    from fedloop.models import model_factory
    from fedloop.net.certs import make_certs

    digest = model_digest(model_factory("logreg", {"input_shape": [FEATURES], "num_classes": 10}))  # sent at join
    g = np.random.default_rng(0)
    x = g.normal(size=(2, FEATURES)).astype(np.float32)
    np.savez(root / "server.npz", x_train=x, y_train=np.array([0, 9]), x_test=x, y_test=np.array([0, 9]))
    certs = root / f"certs{n}-{k}"
    make_certs(certs, [str(c) for c in range(n + k)])
    joining = n + sum(kinds[i % len(kinds)] != "stranger" for i in range(k))  # strangers never join
    config = root / f"adv{n}-{k}.toml"
    config.write_text(f"""
rounds = {rounds + 1}
[data]
name = "npz"
path = "{root / 'server.npz'}"
[model]
name = "logreg"
[strategy]
clients_per_round = {joining}
[eval]
federated = false
every = 1000
[server]
address = "127.0.0.1:0"
min_clients = {joining}
round_deadline = 10
stream_idle_timeout = 5
spool_bytes = {SPOOL_BYTES}
""")
    out = root / f"run{n}-{k}"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    server = ctx.Process(target=_server, args=(str(config), str(out), str(certs), queue))
    server.start()
    port = queue.get()
    spool = {"max": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            files = list((out / "spool").glob("*")) if (out / "spool").is_dir() else []
            spool["max"] = max(spool["max"], sum(f.stat().st_size for f in files if f.exists()))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    groups = [list(range(n))[i::4] for i in range(4)]
    times_queue = ctx.Queue()
    procs = [ctx.Process(target=_clients, args=(port, str(certs), ids, list(range(n, n + k)) if i == 0 else [],
                                                kinds, times_queue, digest)) for i, ids in enumerate(groups)]
    for p in procs:
        p.start()
    result = queue.get()
    reports = [times_queue.get() for _ in procs]
    for p in procs:
        p.join()
    server.join()
    done.set()
    watcher.join()
    times = [t for got, _ in reports for t in got]
    return {"honest": statistics.median(times), "server": statistics.median(result["seconds"][1:]),
            "rss": result["rss"], "spool": spool["max"], "log": (out / "log.txt").stat().st_size,
            "calls": sum(c for _, c in reports), "stop": result["stop"], "excluded": result["excluded"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--honest", type=int, default=20)
    ap.add_argument("--attackers", type=int, nargs="+", default=[0, 4, 8])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS), choices=KINDS,
                    help="hostile behaviours, in turn")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores; {args.honest} honest clients, 1,000,010-param model (4.0 MB), TLS with tokens; "
          f"round deadline 10 s, idle timeout 5 s, spool cap {SPOOL_BYTES >> 20} MB; "
          f"hostile kinds {', '.join(args.kinds)}")
    start = time.perf_counter()
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.attackers:
            r = run(args.honest, k, args.rounds, Path(tmp), args.kinds)
            base = base or r["honest"]
            print(f"  K={k:<2} honest {r['honest']:6.3f} s/round ({r['honest'] / base:5.2f}x K=0)  server "
                  f"{r['server']:6.2f} s/round  peak RSS {r['rss']:5.0f} MB  spool max {r['spool'] / 1e6:6.1f} MB "
                  f"of {SPOOL_BYTES / 1e6:.0f} MB  log.txt {r['log']:,} bytes  attackers' calls {r['calls']:,}  "
                  f"stop {r['stop']}  excluded {r['excluded'] or 'none'}")
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
