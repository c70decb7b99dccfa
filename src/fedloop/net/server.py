"""GrpcFleet: the deployment's fleet. Clients are separate processes that join over gRPC, pull their tasks
and push their replies; the server's round loop is the same code as the simulator's.

Every client is authenticated on every call (a per-client token, or its mutual-TLS certificate) before it
can see any params, and every upload is checked (task number, client, names, shapes, dtypes, finite values,
size) before it can reach aggregation. A rejected upload becomes a Failure with its reason; the round goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from ..errors import ConfigError, TransportError
from ..params import num_bytes
from ..types import ClientInfo, Evaluation, Failure, Reply, Task, Update
from . import fedloop_pb2 as pb
from . import fedloop_pb2_grpc as pb_grpc
from .codec import chunks, encode
from .spool import Spool, check_spooled, write_stream

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0
"""How long a GetTask call waits for a task before telling the client to poll again."""

MESSAGE_BYTES = 8 << 20

SENDERS = 8
"""Task downloads streamed at once; more clients wait their turn (their polls hold no params)."""


def read_tokens(path: str | Path) -> dict[str, int]:
    """token -> client id, from lines "<client id> <token>" (the file `fedloop certs` writes)."""
    tokens: dict[str, int] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the token file ({exc.strerror})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ConfigError(f"{path}:{n}: expected '<client id> <token>' with an integer client id")
        tokens[parts[1]] = int(parts[0])
    return tokens


@dataclass
class _Pending:
    task: Task
    seq: int
    payload: bytes


class Authenticator:
    """Who is calling: the client id behind a bearer token, or behind a client certificate (mTLS)."""

    def __init__(self, tokens: dict[str, int] | None, mutual_tls: bool):
        if not tokens and not mutual_tls:
            raise ConfigError("the server needs client authentication: a token file or mutual TLS")
        self.tokens = tokens or {}
        self.mutual_tls = mutual_tls

    def client_id(self, context: grpc.ServicerContext) -> int:
        if self.mutual_tls:
            names = context.auth_context().get("x509_common_name", [])
            name = names[0].decode() if names else ""
            if name.startswith("client-") and name[7:].isdigit():
                return int(name[7:])
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"certificate {name!r} is not a fedloop client")
        meta = dict(context.invocation_metadata())
        auth = meta.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if token not in self.tokens:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked client token")
        return self.tokens[token]


class GrpcFleet:
    """The server's view of its clients; `run` hands tasks to them and waits for replies until the deadline."""

    def __init__(self, auth: Authenticator, settings_json: str, run_id: str, round_deadline: float):
        self.auth = auth
        self.settings_json = settings_json
        self.run_id = run_id
        self.round_deadline = round_deadline
        self._cond = threading.Condition()
        self._clients: dict[int, ClientInfo] = {}
        self._pending: dict[int, _Pending] = {}
        self._replies: dict[int, Reply] = {}
        self._seen: dict[int, float] = {}  # client id -> when it last called
        self._told_done: set[int] = set()
        self._seq = time.time_ns() // 1000  # distinct from any earlier server process's task numbers
        self.spool = Spool()
        self._checking = threading.Lock()
        self.sending = threading.BoundedSemaphore(SENDERS)
        self._done = False

    # --- the Fleet protocol (called by the round loop) ---
    def clients(self) -> list[ClientInfo]:
        with self._cond:
            return sorted(self._clients.values(), key=lambda c: c.client_id)

    def wait_for_clients(self, count: int, timeout: float | None = None) -> int:
        with self._cond:
            self._cond.wait_for(lambda: len(self._clients) >= count, timeout)
            return len(self._clients)

    def run(self, tasks: Sequence[Task], deadline: float | None = None) -> list[Reply]:
        """Publish the tasks, wait for every reply or the deadline; late clients become Failures."""
        encoded: dict[int, bytes] = {}
        limit = self.round_deadline if deadline is None else deadline
        with self._cond:
            self._replies = {}
            self._pending = {}
            self.spool.clear()  # the previous round's uploads have been aggregated
            for t in tasks:
                self._seq += 1
                payload = encoded.setdefault(id(t.params), encode(t.params))
                self._pending[t.client_id] = _Pending(t, self._seq, payload)
            self._cond.notify_all()
            self._cond.wait_for(lambda: len(self._replies) >= len(tasks), limit)
            replies = dict(self._replies)
            self._pending = {}  # from now on a reply to these tasks is stale
        out: list[Reply] = []
        for t in tasks:
            reply = replies.get(t.client_id)
            if reply is None:
                log.warning("round %d: client %d sent no reply before the %.0f s deadline", t.round, t.client_id,
                            limit)
                reply = Failure(t.client_id, t.round, f"no reply before the {limit:.0f} s deadline")
            out.append(reply)
        return out

    def finish(self, drain: float = 0.0) -> None:
        """End the run: every poll now answers "done"; wait up to `drain` s for live clients to hear it."""
        with self._cond:
            self._done = True
            self._pending = {}
            self._cond.notify_all()
        self.drain(drain)
        self.spool.remove()

    def close(self) -> None:
        self.finish()

    def describe(self) -> str:
        return "grpc"

    # --- called by the gRPC servicer ---
    def join(self, client_id: int, num_examples: int) -> None:
        with self._cond:
            self._clients[client_id] = ClientInfo(client_id, num_examples)
            self._cond.notify_all()
        log.info("client %d joined with %d examples", client_id, num_examples)

    def drain(self, timeout: float) -> None:
        """After finish: wait (at most `timeout`) until every client heard from recently has been told the run
        is over, so live clients exit cleanly instead of retrying a server that is gone."""
        end = time.monotonic() + timeout
        with self._cond:
            while (left := end - time.monotonic()) > 0:
                recent = {c for c, t in self._seen.items() if time.monotonic() - t < timeout}
                if recent <= self._told_done:
                    return
                self._cond.wait(min(left, 0.5))  # "recent" also changes with time, not only on notify

    def next_task(self, client_id: int, after_seq: int, wait: float) -> _Pending | str:
        def ready() -> _Pending | None:
            p = self._pending.get(client_id)
            return p if p is not None and p.seq > after_seq and client_id not in self._replies else None

        with self._cond:
            self._seen[client_id] = time.monotonic()
            self._cond.wait_for(lambda: self._done or ready() is not None, wait)
            if self._done:
                self._told_done.add(client_id)
                self._cond.notify_all()
                return "done"
            return ready() or "wait"

    def accept(self, client_id: int, header: pb.ReplyHeader, path: Path) -> str | None:
        """Record a client's reply; the reason it is rejected, or None."""
        with self._cond:
            self._seen[client_id] = time.monotonic()
            p = self._pending.get(client_id)
            if p is None or p.seq != header.seq:
                reason = f"task {header.seq} is not open for client {client_id} (stale, late or unknown)"
            elif client_id in self._replies:
                reason = f"client {client_id} already replied to task {header.seq}"
            else:
                reason = None
                task = p.task
        if reason is not None:
            log.warning("discarded the upload of client %d for round %d: %s", client_id, header.round, reason)
            return reason
        reply, reason = self._build(client_id, task, header, path)
        with self._cond:
            if self._pending.get(client_id) is not p or client_id in self._replies:
                return f"task {header.seq} closed while the reply was checked"
            self._replies[client_id] = reply
            self._cond.notify_all()
        if reason is not None:
            log.warning("round %d: rejected the upload of client %d: %s", task.round, client_id, reason)
        return reason

    def _build(self, client_id: int, task: Task, header: pb.ReplyHeader, path: Path) -> tuple[Reply, str | None]:
        def reject(reason: str) -> tuple[Reply, str]:
            return Failure(client_id, task.round, f"upload rejected: {reason}"), reason

        if header.round != task.round:
            return reject(f"round {header.round} does not match the task's round {task.round}")
        if header.kind == "failure":
            return Failure(client_id, task.round, header.reason or "client failure"), None
        if header.kind != task.kind:
            return reject(f"a {header.kind!r} reply to a {task.kind!r} task")
        if task.kind == "evaluate":
            return Evaluation(client_id, task.round, int(header.num_examples), dict(header.metrics)), None
        registered = self._clients[client_id].num_examples
        if header.num_examples != registered:
            return reject(f"num_examples {header.num_examples} differs from the {registered} it joined with")
        with self._checking:  # one upload's tensor in memory at a time, whatever the number of clients
            params, problem = check_spooled(path, task.params)
        if params is None:
            return reject(problem or "unreadable upload")
        return Update(client_id, task.round, params, registered, dict(header.metrics)), None

    def max_upload_bytes(self) -> int:
        with self._cond:
            sizes = [num_bytes(p.task.params) for p in self._pending.values()]
        return 2 * max(sizes, default=0) + (1 << 20)


class Servicer(pb_grpc.FederationServicer):
    """gRPC handlers: authenticate, then hand over to the fleet."""

    def __init__(self, fleet: GrpcFleet):
        self.fleet = fleet

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.JoinReply:  # noqa: N802
        cid = self.fleet.auth.client_id(context)
        return pb.JoinReply(run=self.fleet.run_id, settings_json=self.fleet.settings_json, client_id=cid)

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:  # noqa: N802
        cid = self.fleet.auth.client_id(context)
        if request.num_examples < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a client needs at least one training example")
        self.fleet.join(cid, int(request.num_examples))
        return pb.JoinReply(run=self.fleet.run_id, settings_json=self.fleet.settings_json, client_id=cid)

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.TaskChunk]:  # noqa: N802
        cid = self.fleet.auth.client_id(context)
        if cid not in {c.client_id for c in self.fleet.clients()}:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"client {cid} has not joined")
        got = self.fleet.next_task(cid, request.after_seq, POLL_SECONDS)
        if isinstance(got, str):
            yield pb.TaskChunk(header=pb.TaskHeader(status=got))
            return
        t = got.task
        with self.fleet.sending:  # bounded downloads in flight: server memory does not grow with clients
            yield pb.TaskChunk(header=pb.TaskHeader(status="task", round=t.round, kind=t.kind, seed=t.seed,
                                                    size=len(got.payload), seq=got.seq))
            for part in chunks(got.payload):
                yield pb.TaskChunk(data=part)

    def PutReply(self, request_iterator: Iterator[pb.ReplyChunk], context: grpc.ServicerContext) -> pb.PutAck:  # noqa: N802
        cid = self.fleet.auth.client_id(context)
        limit = self.fleet.max_upload_bytes()
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            return pb.PutAck(accepted=False, reason="the upload must start with its header")
        header = first.header
        if header.size > limit:
            return pb.PutAck(accepted=False, reason=f"upload of {header.size} bytes exceeds {limit}")
        path = self.fleet.spool.new_file()
        try:
            write_stream(path, (c.data for c in request_iterator), limit)
        except TransportError as exc:
            path.unlink(missing_ok=True)
            return pb.PutAck(accepted=False, reason=str(exc))
        reason = self.fleet.accept(cid, header, path)
        return pb.PutAck(accepted=reason is None, reason=reason or "")


def start_server(fleet: GrpcFleet, address: str, *, cert_dir: str | Path | None, insecure: bool,
                 mutual_tls: bool = False) -> tuple[grpc.Server, int]:
    """Serve `fleet` on `address` (TLS from cert_dir, or plaintext on loopback with insecure)."""
    # no BDP probing: each stream keeps gRPC's 64 KiB flow-control window, so uploads that wait for a handler
    # thread buffer 64 KiB each in the transport, not a whole update
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64),
                         options=[("grpc.max_receive_message_length", MESSAGE_BYTES),
                                  ("grpc.max_send_message_length", MESSAGE_BYTES), ("grpc.http2.bdp_probe", 0)])
    pb_grpc.add_FederationServicer_to_server(Servicer(fleet), server)
    if insecure:
        host = address.rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"--insecure serves plaintext, which is allowed on loopback only, not {host!r}")
        port = server.add_insecure_port(address)
    else:
        if cert_dir is None:
            raise ConfigError("TLS needs --certs DIR (from `fedloop certs DIR`), or --insecure on loopback")
        d = Path(cert_dir)
        try:
            key, cert, ca = ((d / n).read_bytes() for n in ("server.key", "server.pem", "ca.pem"))
        except OSError as exc:
            raise ConfigError(f"{exc.filename}: cannot read ({exc.strerror}); create it with `fedloop certs`") from None
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca if mutual_tls else None,
                                            require_client_auth=mutual_tls)
        port = server.add_secure_port(address, creds)
    server.start()
    return server, port
