"""The gRPC server: handlers that authenticate each call and hand over to the GrpcFleet, served by grpc.aio on
one event loop in a background thread (the round loop keeps the main thread).

Memory does not grow with the number of clients: a waiting client holds no thread and no params, at most
SENDERS downloads and RECEIVERS uploads stream at once (each one chunk at a time, under gRPC flow control),
and uploads are spooled to disk and checked one at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from ..errors import ConfigError, TransportError
from . import fedloop_pb2 as pb
from . import fedloop_pb2_grpc as pb_grpc
from .codec import PROTOCOL, TASK_KINDS, chunks, config_to_proto
from .fleet import GrpcFleet
from .spool import write_stream

POLL_SECONDS = 5.0
"""How long a GetTask call waits for a task before telling the client to poll again."""

MESSAGE_BYTES = 1 << 20
"""The largest gRPC message either side accepts: a chunk (codec.CHUNK_BYTES) with room to spare."""

SENDERS = 8
"""Task downloads streamed at once; more clients wait their turn (their polls hold no params)."""

RECEIVERS = 8
"""Uploads read at once; the others wait in gRPC flow control (one 64 KiB window each)."""


class Servicer(pb_grpc.FederationServicer):
    """gRPC handlers: authenticate, then hand over to the fleet."""

    def __init__(self, fleet: GrpcFleet):
        self.fleet = fleet
        self.sending = asyncio.Semaphore(SENDERS)
        self.receiving = asyncio.Semaphore(RECEIVERS)

    async def _caller(self, context: grpc.aio.ServicerContext) -> int:
        who = self.fleet.auth.identify(context)
        if isinstance(who, int):
            return who
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, who)
        raise AssertionError("abort raises")

    async def Hello(self, request: pb.HelloRequest, context: grpc.aio.ServicerContext) -> pb.JoinReply:  # noqa: N802
        cid = await self._caller(context)
        return pb.JoinReply(run=self.fleet.run_id, settings_json=self.fleet.settings_json, client_id=cid,
                            protocol=PROTOCOL)

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinReply:  # noqa: N802
        cid = await self._caller(context)
        if request.num_examples < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a client needs at least one training example")
        self.fleet.join(cid, int(request.num_examples))
        return pb.JoinReply(run=self.fleet.run_id, settings_json=self.fleet.settings_json, client_id=cid,
                            protocol=PROTOCOL)

    async def GetTask(self, request: pb.TaskRequest,  # noqa: N802
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.TaskChunk]:
        cid = await self._caller(context)
        if not self.fleet.is_member(cid):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"client {cid} has not joined")
        got = await self.fleet.next_task(cid, request.after_seq, POLL_SECONDS)
        if isinstance(got, str):
            yield pb.TaskChunk(header=pb.TaskHeader(status=pb.POLL_DONE if got == "done" else pb.POLL_WAIT))
            return
        t = got.task
        async with self.sending:
            yield pb.TaskChunk(header=pb.TaskHeader(
                status=pb.POLL_TASK, round=t.round, kind=TASK_KINDS[t.kind], seed=t.seed, size=len(got.payload),
                seq=got.seq, version=t.broadcast.version, stage=t.broadcast.stage, config=config_to_proto(t.config)))
            for part in chunks(got.payload):
                yield pb.TaskChunk(data=part)
            self.fleet.sent(len(got.payload))

    async def PutReply(self, request_iterator: AsyncIterator[pb.ReplyChunk],  # noqa: N802
                       context: grpc.aio.ServicerContext) -> pb.PutAck:
        cid = await self._caller(context)
        limit = self.fleet.max_upload_bytes()
        parts = aiter(request_iterator)
        first = await anext(parts, None)
        if first is None or not first.HasField("header"):
            return pb.PutAck(accepted=False, reason="the upload must start with its header")
        header = first.header
        if header.size > limit:
            return pb.PutAck(accepted=False, reason=f"upload of {header.size} bytes exceeds {limit}")
        path = self.fleet.spool.new_file()
        try:
            async with self.receiving:
                size = await write_stream(path, (c.data async for c in parts), limit)
        except TransportError as exc:
            path.unlink(missing_ok=True)
            return pb.PutAck(accepted=False, reason=str(exc))
        reason = await self.fleet.accept(cid, header, path, size)
        return pb.PutAck(accepted=reason is None, reason=reason or "")


class RunningServer:
    """A grpc.aio server on its own event-loop thread; `stop` shuts both down."""

    def __init__(self, fleet: GrpcFleet, address: str, credentials: grpc.ServerCredentials | None):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fedloop-grpc", daemon=True)
        self._thread.start()
        try:
            self._server, self.port = self._call(self._start(fleet, address, credentials))
        except BaseException:
            self._halt()
            raise

    def _call(self, coro):  # noqa: ANN001, ANN202 - runs a coroutine on the server's loop, from another thread
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _start(self, fleet: GrpcFleet, address: str,
                     credentials: grpc.ServerCredentials | None) -> tuple[grpc.aio.Server, int]:
        # no BDP probing: each stream keeps gRPC's 64 KiB flow-control window, so uploads that wait their turn
        # buffer 64 KiB each in the transport, not a whole update
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MESSAGE_BYTES),
                                          ("grpc.max_send_message_length", MESSAGE_BYTES),
                                          ("grpc.http2.bdp_probe", 0)])
        pb_grpc.add_FederationServicer_to_server(Servicer(fleet), server)
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
                 mutual_tls: bool = False) -> RunningServer:
    """Serve `fleet` on `address` (TLS from cert_dir, or plaintext on loopback with insecure)."""
    if insecure:
        host = address.rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"--insecure serves plaintext, which is allowed on loopback only, not {host!r}")
        return RunningServer(fleet, address, None)
    return RunningServer(fleet, address, server_credentials(cert_dir, mutual_tls))
