"""`fedloop client`: one client process on its own local data. It joins the server, pulls tasks, runs them
through the same ClientApp as the simulator (training, then finish: the strategy's client step, client transforms
and the round-versioned state commit), and pushes the replies; it reconnects with backoff and keeps its persistent
state on its own disk."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import torch

from ..app import model_digest
from ..attacks import AttackOptions, attacked, poisoned
from ..attacks.options import UPDATE_ATTACKS
from ..client import ClientApp, DiskStates, MemoryStates, RoundStates
from ..data.examples import Examples
from ..device import CPU, deterministic, name_of
from ..device import resolve as resolve_device
from ..errors import ConfigError, TransportError
from ..server_options import host_port
from ..types import Broadcast, Evaluation, Failure, Message, Reply, Task, Update
from . import fedloop_pb2 as pb
from . import fedloop_pb2_grpc as pb_grpc
from .codec import KIND_NAMES, PROTOCOL, chunks, config_from_proto, decode, encode, split_extras
from .server import ATTEND_SECONDS, MESSAGE_BYTES, POLL_SECONDS, is_loopback
from .spool import clean

log = logging.getLogger(__name__)

FATAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
EXIT_AT_STATUS = 17
"""The exit status of a client that --exit-at stopped."""
REJOIN = grpc.StatusCode.FAILED_PRECONDITION
"""The server does not know this client (it restarted): join again."""


def _read(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def open_channel(server: str, *, ca_cert: str | None, cert: str | None, key: str | None,
                 insecure: bool) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", MESSAGE_BYTES), ("grpc.max_send_message_length", MESSAGE_BYTES)]
    if insecure:
        host = server.rsplit(":", 1)[0]
        if not is_loopback(host):
            raise ConfigError(f"--insecure sends the token in plaintext, which is allowed on loopback only, "
                              f"not to {host!r}")
        return grpc.insecure_channel(server, options=options)
    if ca_cert is None:
        raise ConfigError("TLS needs --ca-cert (the ca.pem of `fedloop certs`), or --insecure on loopback")
    creds = grpc.ssl_channel_credentials(root_certificates=_read(ca_cert, "CA certificate"),
                                         private_key=_read(key, "client key"),
                                         certificate_chain=_read(cert, "client certificate"))
    return grpc.secure_channel(server, creds, options=options)


def speaks_tls(server: str, timeout: float = 3.0) -> bool | None:
    """Whether the server completes a TLS handshake (its certificate unchecked: this only asks which protocol it
    speaks, to say so when the client's is the other one); None when nothing answers."""
    import socket
    import ssl

    host, port = host_port(server, "--server")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout) as sock:
            try:
                with context.wrap_socket(sock, server_hostname=host.strip("[]")):
                    return True
            except (ssl.SSLError, OSError):
                return False
    except OSError:
        return None


def check_protocol(server: str, insecure: bool) -> bool:
    """A ConfigError when the client speaks plaintext to a TLS server, or TLS to a plaintext one; whether the
    server answered the question at all."""
    tls = speaks_tls(server)
    if insecure and tls:
        raise ConfigError(f"{server}: the server speaks TLS: give --ca-cert (the ca.pem of `fedloop certs`) "
                          "instead of --insecure")
    if not insecure and tls is False:
        raise ConfigError(f"{server}: the server speaks plaintext (it was started with --insecure): give "
                          "--insecure instead of --ca-cert")
    return tls is not None


def reply_chunks(reply: Reply, seq: int) -> Iterator[pb.ReplyChunk]:
    payload = b""
    if isinstance(reply, Update):
        payload = encode(reply.params, reply.extras)
        header = pb.ReplyHeader(round=reply.round, kind=pb.REPLY_FIT, num_examples=reply.num_examples,
                                metrics=dict(reply.metrics), size=len(payload), seq=seq)
    elif isinstance(reply, Message):
        payload = reply.data
        header = pb.ReplyHeader(round=reply.round, kind=pb.REPLY_MESSAGE, size=len(payload), seq=seq)
    elif isinstance(reply, Evaluation):
        header = pb.ReplyHeader(round=reply.round, kind=pb.REPLY_EVALUATE, num_examples=reply.num_examples,
                                metrics=dict(reply.metrics), seq=seq)
    else:
        assert isinstance(reply, Failure)
        header = pb.ReplyHeader(round=reply.round, kind=pb.REPLY_FAILURE, reason=reply.reason, seq=seq)
    yield pb.ReplyChunk(header=header)
    for part in chunks(payload):
        yield pb.ReplyChunk(data=part)


def build_app(settings: dict, client_id: int, data_path: str, states: RoundStates | None = None,
              app_ref: str | None = None, attack: AttackOptions | None = None,
              accept_seeded_noise: bool = False, device: torch.device = CPU) -> ClientApp:
    """The client app the server's settings describe, on this client's own data; `app_ref` (--app) names this
    client's copy of the server's App when the server's reference does not resolve here. The client's DP noise
    (local DP, DP-SGD) comes from its own secret stream whatever the server says, unless `accept_seeded_noise`
    (--accept-seeded-noise, for tests): then a server that asks for the research setting gets noise it can redraw."""
    from ..build import load_data, loss_from_config, model_fn_from_config, strategy_from_config, validate

    config = settings["config"]
    if app_ref is not None or config.get("app", {}).get("ref"):
        config = {**config, "app": {"ref": app_ref or config["app"]["ref"]}}
    privacy = config.get("privacy", {})
    if privacy.get("mode", "none") != "none" and privacy.get("secure_noise") is False:
        if accept_seeded_noise:
            log.warning("TEST ONLY: this client draws its DP noise and batches from the seed the server sends "
                        "(--accept-seeded-noise): the server can remove the noise; nothing is private from it")
        else:
            log.info("the server asks for seeded DP noise (privacy.secure_noise = false); this client draws its "
                     "noise from its own secret stream instead")
            config = {**config, "privacy": {**privacy, "secure_noise": True}}
    cfg = validate(config, "settings from the server")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": data_path})})
    data = load_data(cfg)
    train = Examples.all(data.x_train, data.y_train)
    if attack is not None and attack.kind in ("label_flip", "backdoor"):
        num_classes = int(settings["spec"].get("num_classes") or data.num_classes)
        train = poisoned(train, attack, num_classes, client_id, float(data.x_train.max()))
    return ClientApp(client_id, strategy_from_config(cfg), model_fn_from_config(cfg, settings["spec"]),
                     loss_from_config(cfg), train=train,
                     test=Examples.all(data.x_test, data.y_test), states=states or RoundStates(MemoryStates()),
                     device=device)


def client_attack(kind: str | None, scale: float | None, target: int) -> AttackOptions | None:
    """The attack a test client process runs (`fedloop client --attack`): on its own uploads or its own data.
    alie and ipm need the round's honest updates, which a client process never sees."""
    if kind is None:
        return None
    if kind in ("alie", "ipm"):
        raise ConfigError(f"--attack {kind}: it colludes with the round's honest updates, which only a simulation "
                          "can give it")
    if kind == "scaled" and scale is None:
        raise ConfigError("--attack scaled: give --attack-scale (a client process does not know the round's size)")
    try:
        options = AttackOptions(kind, fraction=0.0, scale=scale, target=target)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(f"--attack {kind}: {exc}") from None
    log.warning("TEST ONLY: this client attacks (%s); never run it against a real federation", kind)
    return options


def attacked_reply(reply: Reply, attack: AttackOptions | None) -> Reply:
    """The upload an attacking test client sends instead of its honest update."""
    if attack is None or not isinstance(reply, Update) or attack.kind not in UPDATE_ATTACKS:
        return reply
    return attacked(attack, reply, [], 1, 1)


def receive_task(client_id: int, header: pb.TaskHeader, data: bytes) -> Task:
    """The task a header and its streamed params describe."""
    if header.kind not in KIND_NAMES:
        raise TransportError(f"task {header.seq}: unknown kind {header.kind}")
    params, extras = split_extras(decode(data, f"task {header.seq}"))
    broadcast = Broadcast(int(header.version), params, extras, header.stage)
    return Task(client_id, int(header.round), KIND_NAMES[header.kind], broadcast, int(header.seed),
                config_from_proto(header.config))


@contextmanager
def attending(stub: pb_grpc.FederationStub, meta: list[tuple[str, str]], seq: int) -> Iterator[None]:
    """Hold a call that tells the server this client works on task `seq`, from a thread, until the reply that the
    block sends starts to arrive: if this process dies meanwhile, the server sees the call break and fails the task
    at once instead of waiting out the round deadline."""
    closed = threading.Event()

    def hold() -> None:
        try:
            while not closed.is_set():
                for chunk in stub.GetTask(pb.TaskRequest(after_seq=seq, working_on=seq), metadata=meta,
                                          timeout=ATTEND_SECONDS + 60):
                    if chunk.header.reason == "closed":
                        closed.set()
        except grpc.RpcError:
            pass  # the main loop sees the server's problems on its own calls

    thread = threading.Thread(target=hold, name="fedloop-attend", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=10.0 if closed.is_set() else 1.0)  # a call still held is cancelled with the channel


def run_client(server: str, data_path: str, *, token_file: str | None, ca_cert: str | None = None,
               cert: str | None = None, key: str | None = None, insecure: bool = False,
               state_dir: str | None = None, expect_id: int | None = None, max_backoff: float = 30.0,
               give_up_after: float = 600.0, threads: int | None = None, app_ref: str | None = None,
               attack: AttackOptions | None = None, accept_seeded_noise: bool = False,
               exit_at: str | None = None, device: str = "auto") -> int:
    """Serve tasks until the server says the run is over; returns the number of tasks answered.

    A lost connection is retried with exponential backoff; after `give_up_after` seconds without any
    successful call (a server that is gone, or a TLS handshake it refuses) the client stops with an error.
    `threads` sets PyTorch's intra-op threads (several clients sharing cores must not oversubscribe them).
    `app_ref` names the user's App (as --app does) when the server's config has one. `exit_at` (tests only): the
    process exits at once, answering nothing, when a task of that stage arrives. `device` (--device) is where this
    client trains and evaluates, whatever device the server uses (fedloop/device.py).
    """
    where = resolve_device(device, "--device")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads {threads}: expected at least 1")
        torch.set_num_threads(threads)
    host_port(server, "--server")
    channel = open_channel(server, ca_cert=ca_cert, cert=cert, key=key, insecure=insecure)
    try:
        with deterministic(where) as nondeterministic:
            answered = _serve_tasks(server, channel, data_path, token_file=token_file, insecure=insecure,
                                    state_dir=state_dir, expect_id=expect_id, max_backoff=max_backoff,
                                    give_up_after=give_up_after, app_ref=app_ref, attack=attack,
                                    accept_seeded_noise=accept_seeded_noise, exit_at=exit_at, device=where)
        if nondeterministic:
            log.warning("on %s, these operations ran without a deterministic implementation: %s", name_of(where),
                        ", ".join(nondeterministic))
        return answered
    finally:
        channel.close()  # every call ends now, on this thread, not in gRPC's clean-up at interpreter shutdown


def _serve_tasks(server: str, channel: grpc.Channel, data_path: str, *, token_file: str | None, insecure: bool,
                 state_dir: str | None, expect_id: int | None, max_backoff: float, give_up_after: float,
                 app_ref: str | None, attack: AttackOptions | None, accept_seeded_noise: bool,
                 exit_at: str | None = None, device: torch.device = CPU) -> int:
    """run_client's loop over an open channel."""
    stub = pb_grpc.FederationStub(channel)
    token = _read(token_file, "token")
    meta = [("authorization", f"Bearer {token.decode().strip()}")] if token else []
    app: ClientApp | None = None
    states, run = RoundStates(MemoryStates()), ""
    after, answered, backoff = 0, 0, 1.0
    last_contact = time.monotonic()
    connected = probed = False

    def left() -> float:
        """Seconds before the client gives up: every wait and call is cut to it."""
        return max(0.1, give_up_after - (time.monotonic() - last_contact))

    while True:
        try:
            if app is None:
                hello = stub.Hello(pb.HelloRequest(), metadata=meta, timeout=min(30.0, left()))
                connected = True
                if hello.protocol != PROTOCOL:
                    raise TransportError(f"{server} speaks fedloop protocol {hello.protocol}; this client speaks "
                                         f"{PROTOCOL}: install the server's fedloop version")
                if expect_id is not None and hello.client_id != expect_id:
                    raise ConfigError(f"--id {expect_id}: the credential belongs to client {hello.client_id}")
                if state_dir:  # kept per run: a resumed server keeps its run id, a new run starts afresh
                    states = RoundStates(DiskStates(Path(state_dir) / hello.run))
                elif hello.run != run:
                    states = RoundStates(MemoryStates())
                run = hello.run
                app = build_app(json.loads(hello.settings_json), int(hello.client_id), data_path, states, app_ref,
                                attack, accept_seeded_noise, device)
                joined = stub.Join(join_request(app), metadata=meta, timeout=min(30.0, left()))
                after = 0  # task numbers belong to one server process
                log.info("joined run %s as client %d", joined.run, app.client_id)
            stream = stub.GetTask(pb.TaskRequest(after_seq=after), metadata=meta, timeout=POLL_SECONDS + 60)
            try:
                header = next(stream).header
                # Read every stream to its end, here: its last event is then handled before this returns, not
                # by gRPC's own thread while the interpreter shuts down (it would hold the stream's lock
                # there, and the stream's finaliser would wait for it forever).
                data = b"".join(c.data for c in stream)
            except BaseException:
                stream.cancel()
                raise
            last_contact, backoff = time.monotonic(), 1.0
            if header.status == pb.POLL_DONE:
                return answered
            if header.status == pb.POLL_FAILED:
                raise TransportError(f"{server}: the run failed on the server ({clean(header.reason)})")
            if header.status != pb.POLL_TASK:
                continue
            with attending(stub, meta, header.seq):
                if exit_at is not None and header.stage == exit_at:
                    _exit_at(header)
                reply = attacked_reply(app.handle(receive_task(app.client_id, header, data)), attack)
                ack = stub.PutReply(reply_chunks(reply, header.seq), metadata=meta, timeout=120)
            if not ack.accepted:
                log.warning("the server rejected the reply to task %d: %s", header.seq, ack.reason)
            after, answered, backoff = header.seq, answered + 1, 1.0
        except grpc.RpcError as exc:
            code = exc.code()
            if code in FATAL:
                raise TransportError(f"{server}: {code.name}: {exc.details()}") from None
            if code == REJOIN:
                log.warning("the server does not know this client (%s); joining again", exc.details())
                app = None
                continue
            if not connected and not probed and code == grpc.StatusCode.UNAVAILABLE:
                probed = check_protocol(server, insecure)  # until a server answers: it will not change its mind
            what = "lost the server" if connected else "cannot reach the server"
            if time.monotonic() - last_contact >= give_up_after - 0.05:
                raise TransportError(f"{server}: {what}; no successful call for {give_up_after:.0f} s (last error "
                                     f"{code.name}: {exc.details()})") from None
            wait = min(backoff, left())
            log.warning("%s %s (%s: %s); retrying in %.0f s", what, server, code.name, exc.details(), wait)
            time.sleep(wait)
            backoff = min(max_backoff, backoff * 2)


def _exit_at(header: pb.TaskHeader) -> None:
    """--exit-at: die while working on the task (once the server holds the call that says so), like a client whose
    process or device stopped mid-round."""
    log.warning("TEST ONLY: exiting at a %s task of round %d (--exit-at)", header.stage, header.round)
    logging.shutdown()
    time.sleep(1.0)
    os._exit(EXIT_AT_STATUS)


def join_request(app: ClientApp) -> pb.JoinRequest:
    """A client's counts, what its data look like and which model it built, so the server can refuse data its
    model cannot take and a model that is not its own."""
    labels = app.train.labels()
    classes = int(labels.max()) + 1 if len(labels) and not labels.is_floating_point() else 0
    return pb.JoinRequest(num_examples=len(app.train), num_test=len(app.test or []),
                          input_shape=list(app.train.x.shape[1:]), num_classes=classes,
                          model_digest=model_digest(app.model_fn))
