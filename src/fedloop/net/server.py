"""The gRPC server: handlers that authenticate each call and hand over to the GrpcFleet, served by grpc.aio on
one event loop in a background thread (the round loop keeps the main thread).

Every byte from a client is hostile until checked, and no client can deny service to the others: a client has at
most one download and one upload in flight; a stream that pauses longer than the idle timeout, or averages less
than the minimum rate, is cut; an upload's header (its task, round, kind and size) is checked before a byte of it
is written, and its space is reserved in the spool's budget first. With at most SLOTS streams each way, k hostile
clients hold at most k of them. Memory does not grow with the number of clients: a waiting client holds no
thread and no params, and uploads are spooled to disk and checked one at a time. Refusals are logged with the
peer's address and client id (never its token).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from ..errors import ConfigError, TransportError
from . import fedloop_pb2 as pb
from . import fedloop_pb2_grpc as pb_grpc
from .codec import PROTOCOL, TASK_KINDS, config_to_proto
from .fleet import GrpcFleet
from .limits import PENALTY, STRIKE_WINDOW, STRIKES, AuditLog, Strikes, peer_host
from .spool import clean, extend, write_stream

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0
"""How long a GetTask call waits for a task before telling the client to poll again."""

ATTEND_SECONDS = 60.0
"""How long the call a client holds while it works on a task is held before it is renewed."""

MESSAGE_BYTES = 1 << 20
"""The largest gRPC message either side accepts: a chunk (codec.CHUNK_BYTES) with room to spare."""

SLOTS = 16
"""Downloads, and uploads, streamed at once; more wait their turn (their polls hold no params). A client holds
at most one of each, so hostile clients cannot take all of them."""

STRANGER_DELAY = 1.0
"""Seconds a penalized address's unauthenticated call waits before it is refused: a flood from one address is
slowed to one call per second per stream, at the cost of a sleeping coroutine."""


@dataclass(frozen=True)
class StreamLimits:
    idle: float = 10.0
    """Seconds a stream may pause (between chunks, or before its header) before it is cut, and that a new
    connection's TLS handshake may take."""
    min_rate: float = 64 * 1024
    """Bytes per second a stream must average once `idle` seconds have passed."""
    connections: int = 4096
    """Connections held at once."""


IDLE_CONNECTION = 30.0
"""Seconds a connection with no call in flight is kept open (a waiting client polls every POLL_SECONDS)."""
CALLS_PER_CONNECTION = 3
"""Calls in flight per allowed connection, on average (a client needs three at most: a poll, a download and an
upload); beyond that many in all, calls are refused (several clients of one process may share a connection)."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Servicer(pb_grpc.FederationServicer):
    """gRPC handlers: authenticate, bound, then hand over to the fleet."""

    def __init__(self, fleet: GrpcFleet, limits: StreamLimits):
        self.fleet = fleet
        self.limits = limits
        self.sending = asyncio.Semaphore(SLOTS)
        self.receiving = asyncio.Semaphore(SLOTS)
        self.downloading: set[int] = set()
        self.uploading: set[int] = set()
        self.strikes: Strikes[int] = Strikes()  # by client id
        self.strangers: Strikes[str] = Strikes()  # unauthenticated callers, by peer host
        self.joins: Strikes[int] = Strikes()  # joins of members that changed nothing, by client id
        self.audits = AuditLog()

    def audit(self, peer: str, client: int | None, what: str, always: bool = False) -> None:
        self.audits.line(peer, client, f"{clean(what)} (client {client if client is not None else 'unknown'}, peer "
                                       f"{clean(peer) or 'unknown'})", always)

    def strike(self, peer: str, client: int) -> None:
        """Count a refused request of `client`; too many in a short time and its calls are refused for a while."""
        if self.strikes.hit(client):
            self.audit(peer, client, f"{STRIKES + 1} refused requests within {STRIKE_WINDOW:g} s: refusing all "
                                     f"its calls for {PENALTY:g} s", always=True)

    async def _caller(self, context: grpc.aio.ServicerContext) -> tuple[int, str]:
        """The caller's client id and peer address (read now: a call that ends early has none), or the call is
        aborted: unknown credentials, or a client penalized for its refused requests. An address that keeps
        calling with unknown credentials is refused after a second's wait and without a log line per call."""
        peer = context.peer() or ""
        who = self.fleet.auth.identify(context)
        if isinstance(who, str):
            host = peer_host(peer)
            if self.strangers.penalized(host):
                self.audits.count(peer, None)
                await asyncio.sleep(STRANGER_DELAY)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many refused calls from this address; "
                                                                        "try again later")
            self.audit(peer, None, f"refused authentication: {who}")
            if self.strangers.hit(host):
                self.audit(peer, None, f"{STRIKES + 1} refused authentications from {clean(host)} within "
                                       f"{STRIKE_WINDOW:g} s: its unauthenticated calls wait {STRANGER_DELAY:g} s "
                                       f"and are refused for {PENALTY:g} s", always=True)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, who)
        assert isinstance(who, int)
        if self.strikes.penalized(who):
            self.audits.count(peer, who)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"client {who}: too many refused requests; try again later")
        return who, peer

    def _joined(self, cid: int) -> pb.JoinReply:
        return pb.JoinReply(run=self.fleet.run_id, settings_json=self.fleet.settings_json, client_id=cid,
                            protocol=PROTOCOL)

    async def Hello(self, request: pb.HelloRequest, context: grpc.aio.ServicerContext) -> pb.JoinReply:  # noqa: N802
        return self._joined((await self._caller(context))[0])

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinReply:  # noqa: N802
        cid, peer = await self._caller(context)
        reason, new = self.fleet.join(cid, int(request.num_examples), int(request.num_test),
                                      list(request.input_shape), int(request.num_classes), request.model_digest)
        if reason is not None:
            self.audit(peer, cid, f"refused join: {reason}")
            self.strike(peer, cid)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
        if new:
            await asyncio.to_thread(self.fleet.save_registry)
        elif self.joins.hit(cid):  # an honest client joins again only after it lost the server or was dropped
            self.audit(peer, cid, f"joined more than {STRIKES} times within {STRIKE_WINDOW:g} s: refusing all its "
                                  f"calls for {PENALTY:g} s", always=True)
            self.strikes.penalize(cid)
        else:
            log.info("client %d joined again (nothing changed)", cid)
        return self._joined(cid)

    async def GetTask(self, request: pb.TaskRequest, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        cid, peer = await self._caller(context)
        if (why := self.fleet.not_member(cid)) is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)
        if request.working_on:
            reason = await self.fleet.attend(cid, int(request.working_on), ATTEND_SECONDS)
            await context.write(pb.TaskChunk(header=pb.TaskHeader(status=pb.POLL_WAIT, reason=reason)))
            return
        got = await self.fleet.next_task(cid, request.after_seq, POLL_SECONDS)
        if isinstance(got, tuple):
            status, reason = got
            await context.write(pb.TaskChunk(header=pb.TaskHeader(status=status, reason=reason)))
            return
        if cid in self.downloading:
            self.audit(peer, cid, "refused a second download in flight")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"client {cid} has a download in flight")
        self.downloading.add(cid)
        try:
            t = got.task
            header = pb.TaskHeader(status=pb.POLL_TASK, round=t.round, kind=TASK_KINDS[t.kind], seed=t.seed,
                                   size=got.download.size, seq=got.seq, version=t.broadcast.version,
                                   stage=t.broadcast.stage, config=config_to_proto(t.config))
            async with self.sending:
                await self._send(context, pb.TaskChunk(header=header), got.download.messages)
            self.fleet.sent(got.download.size)
        except TransportError as exc:
            self.audit(peer, cid, f"cut the download of task {got.seq}: {exc}")
            self.strike(peer, cid)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        finally:
            self.downloading.discard(cid)

    async def _send(self, context: grpc.aio.ServicerContext, header: pb.TaskChunk, messages: Iterable[bytes]
                    ) -> None:
        """Write the header and then each (serialized) message within the idle timeout, at no less than the minimum
        rate."""
        start, sent = time.monotonic(), 0
        try:
            async with asyncio.timeout(self.limits.idle) as deadline:
                await context.write(header)
                for message in messages:
                    await context.write(message)
                    extend(deadline, self.limits.idle)
                    sent += len(message)
                    elapsed = time.monotonic() - start
                    if elapsed > self.limits.idle and sent / elapsed < self.limits.min_rate:
                        raise TransportError(f"download too slow: {sent / elapsed:.0f} bytes/s, "
                                             f"below {self.limits.min_rate:g}")
        except TimeoutError:
            raise TransportError(f"download stalled: the client read nothing for {self.limits.idle:g} s "
                                 f"after {sent} bytes") from None

    async def PutReply(self, request_iterator: AsyncIterator[pb.ReplyChunk],  # noqa: N802
                       context: grpc.aio.ServicerContext) -> pb.PutAck:
        cid, peer = await self._caller(context)

        def refuse(reason: str) -> pb.PutAck:
            self.audit(peer, cid, f"refused an upload: {reason}")
            self.strike(peer, cid)
            return pb.PutAck(accepted=False, reason=reason)

        def cancelled(seq: int) -> pb.PutAck:  # its round had enough replies: refused without blame
            return pb.PutAck(accepted=False, reason=f"task {seq} was closed: its round had enough replies")

        parts = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(anext(parts, None), self.limits.idle)
        except TimeoutError:
            return refuse(f"no header within {self.limits.idle:g} s")
        if first is None or not first.HasField("header"):
            return refuse("the upload must start with its header")
        header = first.header
        if (reason := self.fleet.precheck(cid, header)) is not None:
            return cancelled(header.seq) if self.fleet.excused(cid, header.seq) else refuse(reason)
        if cid in self.uploading:
            return refuse(f"client {cid} has an upload in flight")
        self.uploading.add(cid)
        path = None
        try:
            if header.size > 0:
                path = self.fleet.spool.reserve(header.size)
                if path is None:  # the server's limit, not the client's fault: no strike
                    spool = self.fleet.spool
                    why = f"the server's spool is full ({spool.used} of {spool.capacity} bytes)" + (
                        "" if spool.fixed is not None else ", or its disk is")
                    self.audit(peer, cid, f"refused an upload: {why}")
                    return pb.PutAck(accepted=False, reason=why)
                async with self.receiving:
                    await write_stream(path, (c.data async for c in parts), header.size, self.limits.idle,
                                       self.limits.min_rate)
        except TransportError as exc:
            self.fleet.spool.discard(path)
            return refuse(str(exc))
        except asyncio.CancelledError:  # the client's upload broke off: its process or connection died
            self.fleet.spool.discard(path)
            self.fleet.disconnected(cid, header.seq)
            raise
        finally:
            self.uploading.discard(cid)
        reason = await self.fleet.accept(cid, header, path, header.size)
        if reason is not None and self.fleet.excused(cid, header.seq):  # cancelled while its upload arrived
            return cancelled(header.seq)
        if reason is not None:
            self.audit(peer, cid, f"rejected the reply to task {header.seq}: {reason}")
            self.strike(peer, cid)
        return pb.PutAck(accepted=reason is None, reason=reason or "")


def _task_chunk(message: pb.TaskChunk | bytes) -> bytes:
    """GetTask's response serializer: a download's data messages arrive serialized already (codec.Download)."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_servicer(servicer: Servicer, server: grpc.aio.Server) -> None:
    """The generated registration (fedloop_pb2_grpc), with GetTask writing pre-serialized messages as they are."""
    unary, stream_out, stream_in = (grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler,
                                    grpc.stream_unary_rpc_method_handler)
    handlers = {
        "Hello": unary(servicer.Hello, pb.HelloRequest.FromString, pb.JoinReply.SerializeToString),
        "Join": unary(servicer.Join, pb.JoinRequest.FromString, pb.JoinReply.SerializeToString),
        "GetTask": stream_out(servicer.GetTask, pb.TaskRequest.FromString, _task_chunk),
        "PutReply": stream_in(servicer.PutReply, pb.ReplyChunk.FromString, pb.PutAck.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("fedloop.Federation", handlers),))
    server.add_registered_method_handlers("fedloop.Federation", handlers)


class RunningServer:
    """A grpc.aio server on its own event-loop thread; `stop` shuts both down."""

    def __init__(self, fleet: GrpcFleet, address: str, credentials: grpc.ServerCredentials | None,
                 limits: StreamLimits):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fedloop-grpc", daemon=True)
        self._thread.start()
        try:
            self._servicer = Servicer(fleet, limits)
            self._server, self.port = self._call(self._start(fleet, address, credentials, limits))
        except RuntimeError:  # grpc: "Failed to bind to address ..."
            self._halt()
            raise ConfigError(f"cannot listen on {address}: the address is taken (is another server using it?) or "
                              f"is not one of this machine's (--log-level debug shows gRPC's reason)") from None
        except BaseException:
            self._halt()
            raise

    def _call(self, coro):  # noqa: ANN001, ANN202 - runs a coroutine on the server's loop, from another thread
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _start(self, fleet: GrpcFleet, address: str, credentials: grpc.ServerCredentials | None,
                     limits: StreamLimits) -> tuple[grpc.aio.Server, int]:
        # no BDP probing: each stream keeps gRPC's 64 KiB flow-control window, so uploads that wait their turn
        # buffer 64 KiB each in the transport, not a whole update; no SO_REUSEPORT: a second server on the same
        # address fails instead of splitting the clients with this one
        # connections that never finish their handshake, or hold no call, are closed within a bound, and their
        # number is capped, so that held or half-open connections cannot take the server's memory
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MESSAGE_BYTES),
                                          ("grpc.max_send_message_length", MESSAGE_BYTES),
                                          ("grpc.http2.bdp_probe", 0), ("grpc.so_reuseport", 0),
                                          ("grpc.server_handshake_timeout_ms", int(limits.idle * 1000)),
                                          ("grpc.max_connection_idle_ms", int(IDLE_CONNECTION * 1000)),
                                          ("grpc.max_allowed_incoming_connections", limits.connections)],
                                 maximum_concurrent_rpcs=CALLS_PER_CONNECTION * limits.connections)
        add_servicer(self._servicer, server)
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
        fleet.attach(asyncio.get_running_loop())
        await server.start()
        return server, port

    def stop(self, grace: float | None = None) -> None:
        try:
            self._call(self._server.stop(grace))
        finally:
            self._halt()
            self._servicer.audits.flush()

    def _halt(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def server_credentials(cert_dir: str | Path | None, mutual_tls: bool) -> grpc.ServerCredentials:
    """TLS credentials from the files `fedloop certs` writes (mutual TLS: client certificates required)."""
    if cert_dir is None:
        raise ConfigError("TLS needs --certs DIR (from `fedloop certs DIR`), or --insecure on loopback")
    d = Path(cert_dir)
    try:
        key, cert, ca = ((d / n).read_bytes() for n in ("server.key", "server.pem", "ca.pem"))
    except OSError as exc:
        raise ConfigError(f"{exc.filename}: cannot read ({exc.strerror}); create it with `fedloop certs`") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca if mutual_tls else None,
                                       require_client_auth=mutual_tls)


def start_server(fleet: GrpcFleet, address: str, *, cert_dir: str | Path | None, insecure: bool,
                 mutual_tls: bool = False, limits: StreamLimits = StreamLimits()) -> RunningServer:
    """Serve `fleet` on `address` (TLS from cert_dir, or plaintext on loopback with insecure)."""
    if insecure:
        host = address.rsplit(":", 1)[0]
        if not is_loopback(host):
            raise ConfigError(f"--insecure serves plaintext, which is allowed on loopback only, not {host!r}")
        return RunningServer(fleet, address, None, limits)
    return RunningServer(fleet, address, server_credentials(cert_dir, mutual_tls), limits)
