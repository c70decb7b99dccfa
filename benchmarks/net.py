"""The gRPC deployment on loopback: one server process and N lightweight clients, a 1M-parameter model.

Clients are coroutines (grpc.aio) in a few processes that import only grpc, NumPy and safetensors (no torch): each joins
with its own token over TLS, pulls its task (all of its bytes) and pushes back a same-shaped update (zeros, encoded
once per client process and task layout; the server checks and aggregates it like any other). So the figures are
the server's and the protocol's costs, not training. Per N it prints seconds per round (median), the server's peak
RSS, and the bytes that crossed the loopback interface per round (TLS and gRPC framing included) against the raw size
of the params moved (N x params down + N x params up).

With --secagg the round runs under secure aggregation: each light client answers the advertise, share and unmask
stages with fedloop's own protocol code (fedloop.secagg.protocol, which needs no torch) and sends its zero update
masked, so the figures include every client's key agreements and masking and the server's unmasking.

    python benchmarks/net.py                      # N = 10, 50, 200; 4 rounds each
    python benchmarks/net.py --clients 10 --rounds 3
    python benchmarks/net.py --clients 50 200 --aggregator median
    python benchmarks/net.py --clients 10 50 200 --secagg
    python benchmarks/net.py --clients 100 500 1000 --rounds 3           # the scale table (issue 23)
    python benchmarks/net.py --clients 1000 --rounds 3 --over-selection 0.1

Besides time and memory it prints the server's peak number of open file descriptors and the share of rounds that
had a failure (there should be none: every light client answers). With --over-selection o, strategy.clients_per_round
is k = floor(N / (1 + o)): a round asks ceil((1 + o) k) <= N clients and ends once k updates are in; the others'
tasks are cancelled and counted apart from failures.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from queue import Empty

SRC = Path(__file__).resolve().parent.parent / "src"
FEATURES = 100_000  # logistic regression to 10 classes: 1,000,010 params
CLIENT_PROCESSES = 4
CHUNK = 128 << 10  # bytes per upload message, as fedloop.net.codec.CHUNK_BYTES


def _import_protocol():
    """The generated gRPC modules without importing the fedloop package (and so torch)."""
    for name, path in (("fedloop", SRC / "fedloop"), ("fedloop.net", SRC / "fedloop" / "net"),
                       ("fedloop.secagg", SRC / "fedloop" / "secagg")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(path)]
            sys.modules[name] = module
    from fedloop.net import fedloop_pb2, fedloop_pb2_grpc

    return fedloop_pb2, fedloop_pb2_grpc


_ZERO_REPLIES: dict[bytes, tuple[int, list[bytes]]] = {}
"""A client process's zero update per task layout (the task's safetensors header), as serialized upload messages:
its clients send the same bytes, so the clients' CPU, which shares this machine with the server, goes to the
protocol rather than to encoding zeros."""


def _zero_reply(parts: list[bytes], pb) -> tuple[int, list[bytes]]:  # noqa: ANN001 - the generated module
    from safetensors.numpy import load, save

    head = parts[0][:8 + int.from_bytes(parts[0][:8], "little")]  # safetensors: length, then its JSON header
    if head not in _ZERO_REPLIES:
        payload = save({k: v * 0 for k, v in load(b"".join(parts)).items()})
        _ZERO_REPLIES[head] = len(payload), [pb.ReplyChunk(data=payload[i:i + CHUNK]).SerializeToString()
                                             for i in range(0, len(payload), CHUNK)]
    return _ZERO_REPLIES[head]


async def _client(port: int, certs: Path, cid: int, digest: str) -> None:
    """One light client: a coroutine with its own TLS channel on its process's event loop."""
    import grpc

    pb, pb_grpc = _import_protocol()
    creds = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    options = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        stub = pb_grpc.FederationStub(channel)
        put = channel.stream_unary("/fedloop.Federation/PutReply", response_deserializer=pb.PutAck.FromString,
                                   request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString())
        meta = [("authorization", f"Bearer {(certs / f'client-{cid}.token').read_text().strip()}")]
        await stub.Join(pb.JoinRequest(num_examples=10, input_shape=[FEATURES], num_classes=10, model_digest=digest),
                        metadata=meta, timeout=600)
        after = 0
        sessions: dict = {}
        while True:
            call = stub.GetTask(pb.TaskRequest(after_seq=after), metadata=meta, timeout=600)
            header = (await call.read()).header
            if header.status == pb.POLL_DONE:
                return
            if header.status != pb.POLL_TASK:
                continue
            parts_in = []
            while (chunk := await call.read()) is not grpc.aio.EOF:
                parts_in.append(chunk.data)
            if sum(map(len, parts_in)) != header.size:
                raise RuntimeError(f"client {cid}: task {header.seq} has {sum(map(len, parts_in))} bytes, its header "
                                   f"says {header.size}")
            if header.kind == pb.TASK_SECAGG or "secagg.shares" in header.config:
                payload = _secure_reply(cid, header, sessions)
                reply = pb.ReplyHeader(round=header.round, kind=pb.REPLY_MESSAGE, size=len(payload), seq=header.seq)
                parts = [pb.ReplyChunk(data=payload[i:i + CHUNK]) for i in range(0, len(payload), CHUNK)]
            else:
                size, parts = _zero_reply(parts_in, pb)
                reply = pb.ReplyHeader(round=header.round, kind=pb.REPLY_FIT, num_examples=10, size=size,
                                       seq=header.seq)
            del parts_in
            await put(iter([pb.ReplyChunk(header=reply), *parts]), metadata=meta, timeout=600)
            after = header.seq


def _secure_reply(cid: int, header, sessions: dict) -> bytes:
    """A light client's message for one stage of secure aggregation: its update is zero, its count 10."""
    import numpy as np

    from fedloop.secagg import wire
    from fedloop.secagg.protocol import ClientSession
    from fedloop.secagg.ring import Ring

    config = {k: getattr(v, v.WhichOneof("value")) for k, v in header.config.items()}
    bits = config["secagg.bits"]
    if header.stage == "secagg-advertise":
        session = sessions[header.round] = ClientSession(cid, header.round, Ring(bits, 1.0, 1),
                                                         config["secagg.threshold"])
        return b"".join(session.advertise())
    session = sessions[header.round]
    if header.stage == "secagg-share":
        peers = wire.unpack(config["secagg.peers"], wire.KEYS_BYTES, "peers")
        return wire.pack(session.share_keys({j: (k[:32], k[32:]) for j, k in peers.items()}),
                         wire.CIPHERTEXT_BYTES)
    if header.stage == "secagg-unmask":
        return wire.pack_reveals(session.unmask(wire.unpack_ids(config["secagg.survivors"], "survivors")))
    vector = np.zeros(config["secagg.size"] + 2, dtype=np.uint64)
    vector[-1] = 10  # the sample count, masked like the rest
    shares = wire.unpack(config["secagg.shares"], wire.CIPHERTEXT_BYTES, "shares")
    return wire.pack_vector(session.masked_input(vector, shares), bits)


def _client_process(port: int, certs: str, ids: list[int], digest: str) -> None:
    import asyncio

    async def every() -> None:
        await asyncio.gather(*(_client(port, Path(certs), c, digest) for c in ids))

    asyncio.run(every())


def _server(config: str, out: str, certs: str, queue: mp.Queue) -> None:
    from fedloop.build import load_config
    from fedloop.net.serve import serve

    fds = [0]
    done = threading.Event()

    def count_fds() -> None:
        while not done.wait(0.1):
            fds[0] = max(fds[0], len(os.listdir("/proc/self/fd")))

    threading.Thread(target=count_fds, daemon=True).start()
    result = serve(load_config(config), out, cert_dir=certs, tokens=None, on_listen=queue.put)
    done.set()
    cancelled = "cancelled: the round had its"
    queue.put({"seconds": [r["seconds"] for r in result.history], "fds": fds[0],
               "aggregate": [r["timings"]["aggregate"] for r in result.history],
               "failed": sum(any(not f["reason"].startswith(cancelled) for f in r.get("failed_clients", []))
                             for r in result.history),
               "cancelled": sum(sum(f["reason"].startswith(cancelled) for f in r.get("failed_clients", []))
                                for r in result.history),
               "cpu": cpu_seconds(resource.RUSAGE_SELF),
               "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def cpu_seconds(who: int) -> float:
    """User and system CPU seconds of this process (RUSAGE_SELF) or of its waited-for children (RUSAGE_CHILDREN)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        if line.strip().startswith("lo:"):
            return int(line.split(":", 1)[1].split()[0])  # bytes received on lo = bytes sent on lo
    return 0


def run(n: int, rounds: int, root: Path, aggregator: str = "mean", secagg: bool = False, over: float = 0.0) -> None:
    import numpy as np

    from fedloop.app import model_digest
    from fedloop.models import model_factory
    from fedloop.net.certs import make_certs

    g = np.random.default_rng(0)
    x = g.normal(size=(2, FEATURES)).astype(np.float32)
    np.savez(root / "server.npz", x_train=x, y_train=np.array([0, 9]), x_test=x, y_test=np.array([0, 9]))
    digest = model_digest(model_factory("logreg", {"input_shape": [FEATURES], "num_classes": 10}))  # sent at join
    certs = root / f"certs{n}"
    make_certs(certs, [str(c) for c in range(n)])
    config = root / f"net{n}.toml"
    config.write_text(f"""
rounds = {rounds + 1}
[data]
name = "npz"
path = "{root / 'server.npz'}"
[model]
name = "logreg"
[strategy]
clients_per_round = {int(n / (1 + over)) if over else n}
over_selection = {over}
[aggregator]
name = "{aggregator}"
[eval]
federated = false
every = 1000
[server]
address = "127.0.0.1:0"
min_clients = {n}
round_deadline = 600
""" + ("[secagg]\nenabled = true\n" if secagg else ""))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    server = ctx.Process(target=_server, args=(str(config), str(root / f"run{n}"), str(certs), queue))
    server.start()
    port = queue.get()
    before = loopback_bytes()
    children_before = cpu_seconds(resource.RUSAGE_CHILDREN)
    groups = [list(range(n))[i::CLIENT_PROCESSES] for i in range(CLIENT_PROCESSES)]
    clients = [ctx.Process(target=_client_process, args=(port, str(certs), ids, digest)) for ids in groups if ids]
    for c in clients:
        c.start()
    while True:  # the server's figures, unless a client process fails (then nothing would ever finish the run)
        try:
            out = queue.get(timeout=1.0)
            break
        except Empty:
            if any(c.exitcode not in (None, 0) for c in clients):
                server.terminate()
                for c in clients:
                    c.terminate()
                codes = [c.exitcode for c in clients]
                raise SystemExit(f"N={n}: a client process failed (exit codes {codes})") from None
    wire = loopback_bytes() - before
    server.join()
    for c in clients:
        c.join()
    children = cpu_seconds(resource.RUSAGE_CHILDREN) - children_before
    per_round = statistics.median(out["seconds"][1:])  # round 1 includes the clients' first connections
    raw = 2 * n * (FEATURES * 10 + 10) * 4
    print(f"  N={n:<4} {per_round:>9.3f} s/round  server peak RSS {out['rss']:>6.0f} MB  "
          f"loopback {wire / (rounds + 1) / 1e6:>8.1f} MB/round vs raw params {raw / 1e6:>7.1f} MB/round "
          f"({wire / (rounds + 1) / raw:.3f}x)  peak fds {out['fds']}  rounds with failures "
          f"{out['failed']}/{len(out['seconds'])}  server CPU {out['cpu'] / len(out['seconds']):.1f} s/round  "
          f"clients' CPU {(children - out['cpu']) / len(out['seconds']):.1f} s/round  "
          f"aggregation {statistics.median(out['aggregate'][1:]):.2f} s/round"
          + (f"  cancelled {out['cancelled']}" if over else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--aggregator", default="mean", help="the server's aggregator (median, krum, ...: their peak "
                                                          "memory grows with N x one chunk, not N x the model)")
    ap.add_argument("--secagg", action="store_true", help="run the rounds under secure aggregation (SecAgg+)")
    ap.add_argument("--over-selection", type=float, default=0.0, help="end each round once N / (1 + o) replied")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores; model: logistic regression, {FEATURES * 10 + 10:,} params "
          f"({(FEATURES * 10 + 10) * 4 / 1e6:.1f} MB); TLS with tokens; clients as coroutines in "
          f"{CLIENT_PROCESSES} processes; aggregator {args.aggregator}"
          + ("; secure aggregation (SecAgg+, its defaults)" if args.secagg else ""))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            run(n, args.rounds, Path(tmp), args.aggregator, args.secagg, args.over_selection)
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
