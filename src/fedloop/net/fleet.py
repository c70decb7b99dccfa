"""GrpcFleet: the deployment's fleet. The round loop (the same code as the simulator's) runs in the server's main
thread and submits tasks and collects replies here; the gRPC handlers run as coroutines on one event loop and take
tasks and hand in replies here, so an idle client's long poll costs no thread, whatever the number of clients.

Tasks are open until answered or cancelled, and a client may hold several (a round may have several exchanges).
Each broadcast is encoded once, whatever the number of its tasks. A client that has not called for longer than the
liveness timeout (and holds no task it is working on) is not offered to the strategy until it calls again; one
that left `max_missed` tasks in a row unanswered, until it joins again.

Nothing a client sends is trusted unchecked: its sample counts are fixed at its first join (and capped), a reply
must answer one of its open tasks, an update must match its task's names, shapes and dtypes with finite values
(and a norm bound, when set), an evaluation must count at most the examples the client declared for that split,
and every metric must be finite and within its range.

Shared state is guarded by one threading.Condition; the event loop's waiters are woken through `_changed`, an
asyncio.Event replaced on every wake-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..fleet import ASYNC, CONCURRENT, MESSAGE_SIZE, MESSAGES, STAGES, message_refusal
from ..params import num_bytes
from ..server_options import ServerOptions
from ..store import atomic_write_text
from ..types import ClientInfo, Evaluation, Failure, Message, Reply, Task, Update
from . import fedloop_pb2 as pb
from .auth import Authenticator
from .codec import Download, encode_download
from .spool import Lease, Spool, SpooledParams, check_spooled, clean

MAX_METRICS = 32
EXCUSED = 16
"""Tasks per client remembered as closed without its fault, whose late uploads are refused without a strike."""
METRIC_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """An open task with its number and its broadcast's download (shared by the broadcast's tasks)."""

    task: Task
    seq: int
    download: Download
    fetched: bool = False
    checking: bool = False
    uploading: bool = False
    attended: asyncio.Event | None = None
    """Set (on the event loop) when the client's reply starts to arrive or the task closes: ends the call the
    client holds while it works on the task."""


class GrpcFleet:
    """The server's view of its clients: tasks go out when clients poll, replies come in as they upload."""

    capabilities = frozenset({STAGES, CONCURRENT, MESSAGES, ASYNC})

    def __init__(self, auth: Authenticator, settings_json: str, run_id: str, spool: Spool,
                 options: ServerOptions | None = None, registry: Path | None = None, spec: dict | None = None):
        self.auth = auth
        self.spec = spec or {}
        """What the model takes (input_shape, num_classes) and its model_digest, checked against a joining client's
        data and model."""
        self.settings_json = settings_json
        self.run_id = run_id
        self.options = options or ServerOptions()
        self.registry = registry
        self._cond = threading.Condition()
        self._clients: dict[int, ClientInfo] = {}
        self._counts: dict[int, tuple[int, int]] = {}  # client id -> (train, test) examples, fixed at first join
        if registry is not None and registry.is_file():
            self._counts = {int(k): (v[0], v[1]) for k, v in json.loads(registry.read_text()).items()}
        self._missed: dict[int, int] = {}  # client id -> tasks left unanswered in a row
        self._excused: dict[int, deque[int]] = {}  # client id -> its last tasks closed for enough replies (no fault)
        self._open: dict[int, Pending] = {}  # seq -> open task
        self._client_open: dict[int, list[int]] = {}  # client id -> seqs of its open tasks, oldest first
        self._replies: list[Reply] = []
        self._seen: dict[int, float] = {}  # client id -> when it last called (-1e18: it left, for liveness)
        self._called: dict[int, float] = {}  # client id -> when it last called, whatever happened since
        self._told_done: set[int] = set()
        self._seq = time.time_ns() // 1000  # distinct from any earlier server process's task numbers
        self._done = False
        self._failure = ""
        self._upload_limit = _upload_limit(0)
        self._down = 0
        self._up = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self.spool = spool
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="fedloop-check")  # one upload checked at a time
        self._registry_lock = threading.Lock()  # one clients.json write at a time, the latest counts last
        self._registry_saved = 0  # how many clients' counts the last clients.json write held

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the event loop the gRPC handlers run on (called from that loop)."""
        self._loop, self._changed = loop, asyncio.Event()

    def _wake(self) -> None:
        """Wake every handler waiting for a task (callable from any thread)."""
        def swap() -> None:
            changed, self._changed = self._changed, asyncio.Event()
            if changed is not None:
                changed.set()

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(swap)

    # --- the Fleet protocol (called by the round loop) ---
    def _live(self) -> list[ClientInfo]:
        now = time.monotonic()
        busy = {p.task.client_id for p in self._open.values() if p.fetched}
        return sorted((c for cid, c in self._clients.items()
                       if self._missed.get(cid, 0) < self.options.max_missed and
                       (now - self._seen.get(cid, -1e18) <= self.options.liveness_timeout or cid in busy)),
                      key=lambda c: c.client_id)

    def presence(self) -> list[dict[str, float | int | bool | None]]:
        """Every client that joined: its sample count, whether it is live (as clients() counts it) and when it last
        called (Unix time), for the dashboard."""
        with self._cond:
            live = {c.client_id for c in self._live()}
            now, wall = time.monotonic(), time.time()
            return [{"client": cid, "examples": c.num_examples, "live": cid in live,
                     "last_seen": round(wall - (now - self._called[cid]), 3) if cid in self._called else None,
                     "missed": self._missed.get(cid, 0)}
                    for cid, c in sorted(self._clients.items())]

    def clients(self) -> list[ClientInfo]:
        """Joined clients that called within the liveness timeout (or are working on a task) and have not left too
        many tasks in a row unanswered."""
        with self._cond:
            return self._live()

    def not_member(self, client_id: int) -> str | None:
        """Why a client must join (again) before it gets tasks, or None."""
        with self._cond:
            if client_id not in self._clients:
                return f"client {client_id} has not joined"
            if self._missed.get(client_id, 0) >= self.options.max_missed:
                return f"client {client_id} left {self._missed[client_id]} tasks in a row unanswered; join again"
            return None

    def wait_for_clients(self, count: int, timeout: float | None = None) -> int:
        with self._cond:
            self._cond.wait_for(lambda: len(self._live()) >= count, timeout)
            return len(self._live())

    def missing(self) -> list[int]:
        """Clients that joined this run before (clients.json) and are not live now."""
        with self._cond:
            live = {c.client_id for c in self._live()}
            return sorted(c for c in self._counts if c not in live)

    def submit(self, tasks: Sequence[Task]) -> None:
        """Open the tasks; each broadcast is encoded once (outside the lock: handlers go on meanwhile)."""
        payloads: dict[tuple[int, str], Download] = {}
        for t in tasks:
            if t.broadcast.key not in payloads:
                payloads[t.broadcast.key] = encode_download(t.params, t.extras)
        with self._cond:
            for t in tasks:
                self._seq += 1
                self._open[self._seq] = Pending(t, self._seq, payloads[t.broadcast.key])
                self._client_open.setdefault(t.client_id, []).append(self._seq)
            self._set_upload_limit()
            self._wake()

    def _set_upload_limit(self) -> None:
        largest = max((num_bytes(p.task.params) + num_bytes(p.task.extras) for p in self._open.values()), default=0)
        self._upload_limit = _upload_limit(largest)
        self.spool.need = len(self._open) * self._upload_limit  # a spool without a fixed budget follows the tasks

    def collect(self, until: float | None = None, min_replies: int | None = None) -> list[Reply]:
        """Replies in the order they arrived: every one so far once all open tasks are answered (or at `until`), or
        the first `min_replies` as soon as that many arrived (the rest wait for the next collect)."""
        with self._cond:
            def ready() -> bool:
                return not self._open or (min_replies is not None and len(self._replies) >= min_replies)

            self._cond.wait_for(ready, None if until is None else max(0.0, until - time.monotonic()))
            n = len(self._replies) if min_replies is None else min(min_replies, len(self._replies))
            out, self._replies = self._replies[:n], self._replies[n:]
            return out

    def cancel(self, clients: Collection[int] | None = None, missed: bool = True) -> list[Task]:
        """Close the open tasks of `clients` (every open task when None): late replies to them are discarded, and
        count as missed when `missed`."""
        with self._cond:
            ids = None if clients is None else set(clients)
            closing = [p for p in self._open.values() if ids is None or p.task.client_id in ids]
            for p in closing:
                if missed:
                    self._missed[p.task.client_id] = self._missed.get(p.task.client_id, 0) + 1
                else:
                    self._excused.setdefault(p.task.client_id, deque(maxlen=EXCUSED)).append(p.seq)
                self._release(p)
                del self._open[p.seq]
                self._client_open[p.task.client_id].remove(p.seq)
            self._set_upload_limit()
            return [p.task for p in closing]

    def traffic(self) -> tuple[int, int]:
        """Payload bytes streamed to clients (tasks) and from them (uploads, rejected ones included)."""
        with self._cond:
            return self._down, self._up

    def finish(self, drain: float = 0.0, failure: str | None = None) -> None:
        """End the run: every poll now answers "done" (or that the run failed, and why); wait up to `drain` s for
        live clients to hear it."""
        with self._cond:
            self._done = True
            self._failure = failure or ""
            for p in self._open.values():
                self._release(p)
            self._open, self._client_open = {}, {}
            self._set_upload_limit()
            self._wake()
        self.drain(drain)
        self._checker.shutdown(wait=True)

    def close(self) -> None:
        self.finish()

    def describe(self) -> str:
        return "grpc"

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

    # --- called by the gRPC handlers, on the event loop ---
    def join(self, client_id: int, num_examples: int, num_test: int, input_shape: Sequence[int] = (),
             num_classes: int = 0, model_digest: str = "") -> tuple[str | None, bool]:
        """Register a client with its sample counts: why it is refused (or None), and whether the join changed
        anything (a member joining again with the same declaration changes nothing, and writes nothing). A
        client's counts are fixed at its first join (kept in the run directory across server restarts by
        `save_registry`, off the event loop) and capped by max_examples; data whose examples or labels the model
        cannot take are refused, and so is a declaration that leaves them out."""
        cap = self.options.max_examples
        if not 1 <= num_examples <= cap or not 0 <= num_test <= cap:
            return (f"sample counts must be 1..{cap} (train) and 0..{cap} (test), not {num_examples} and "
                    f"{num_test}"), False
        expected = tuple(self.spec.get("input_shape") or ())
        if expected and tuple(input_shape) != expected:
            return f"the client's examples have shape {tuple(input_shape)}; the model takes {expected}", False
        classes = int(self.spec.get("num_classes") or 0)
        if classes and num_classes < 1:
            return f"the client declares no labels; the model has {classes} classes", False
        if classes and num_classes > classes:
            return f"the client's labels go up to {num_classes - 1}; the model has {classes} classes", False
        digest = self.spec.get("model_digest")
        if digest and model_digest != digest:
            return ("the client's model differs from the server's (its params' names, shapes or dtypes): run the "
                    "client with the server's model or --app"), False
        with self._cond:
            first = self._counts.setdefault(client_id, (num_examples, num_test))
            if first != (num_examples, num_test):
                return (f"client {client_id} joined this run with {first[0]} training and {first[1]} test examples; "
                        f"its counts are fixed, not {num_examples} and {num_test}"), False
            self._seen[client_id] = self._called[client_id] = time.monotonic()
            if client_id in self._clients and self._missed.get(client_id, 0) < self.options.max_missed:
                return None, False
            new = client_id not in self._clients
            self._clients[client_id] = ClientInfo(client_id, num_examples)
            self._missed[client_id] = 0
            self._cond.notify_all()
        log.info("client %d joined with %d examples", client_id, num_examples)
        return None, new

    def save_registry(self) -> None:
        """Write the clients' fixed counts to the run directory (clients.json), atomically, and return once a write
        that includes every count known at the call is on disk; blocking file I/O, so the handlers call it on a
        worker thread. Joins that arrive together share one write (a group commit), so N joins cost far fewer than
        N writes of an N-entry file."""
        if self.registry is None:
            return
        with self._cond:
            wanted = len(self._counts)
        with self._registry_lock:
            if self._registry_saved >= wanted:  # a write that waited for the lock before us had our count
                return
            with self._cond:
                counts = {str(k): list(v) for k, v in self._counts.items()}
            atomic_write_text(self.registry, json.dumps(counts))
            self._registry_saved = len(counts)

    async def next_task(self, client_id: int, after_seq: int, wait: float) -> Pending | tuple[pb.PollStatus, str]:
        """The client's oldest open task after `after_seq`; or (POLL_DONE or POLL_FAILED, why) when the run is over,
        or (POLL_WAIT, "") after `wait` s without a task."""
        end = time.monotonic() + wait
        while True:
            with self._cond:
                self._seen[client_id] = self._called[client_id] = time.monotonic()
                if self._done:
                    self._told_done.add(client_id)
                    self._cond.notify_all()
                    return (pb.POLL_FAILED, self._failure) if self._failure else (pb.POLL_DONE, "")
                for seq in self._client_open.get(client_id, []):
                    p = self._open[seq]
                    if seq > after_seq and not p.checking:
                        p.fetched = True
                        return p
                changed = self._changed
            left = end - time.monotonic()
            if left <= 0 or changed is None:
                return pb.POLL_WAIT, ""
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass

    def sent(self, size: int) -> None:
        with self._cond:
            self._down += size

    def excused(self, client_id: int, seq: int) -> bool:
        """Whether task `seq` of the client was closed without its fault (its round had enough replies): a late
        upload to it is refused without counting against the client."""
        with self._cond:
            return seq in self._excused.get(client_id, ())

    def precheck(self, client_id: int, header: pb.ReplyHeader) -> str | None:
        """Why an upload is refused before a byte of it is written, or None. Only a client with an open task may
        upload; a header that is malformed for its task (round, kind, size) answers the task as a Failure."""
        with self._cond:
            self._seen[client_id] = self._called[client_id] = time.monotonic()
            p = self._open.get(header.seq)
            if p is None or p.task.client_id != client_id:
                return f"task {header.seq} is not open for client {client_id} (stale, late or unknown)"
            if p.checking:
                return f"client {client_id} already replied to task {header.seq}"
            task = p.task
            kinds = {pb.REPLY_FIT, pb.REPLY_EVALUATE, pb.REPLY_FAILURE, pb.REPLY_MESSAGE}
            if header.round != task.round:
                reason = f"round {header.round} does not match the task's round {task.round}"
            elif header.kind not in kinds:
                reason = f"unknown reply kind {header.kind}"
            elif header.kind == pb.REPLY_MESSAGE and (refusal := message_refusal(task, header.size)) is not None:
                reason = refusal
            elif header.kind == pb.REPLY_FIT and not 0 < header.size <= self._upload_limit:
                reason = f"declared size {header.size} is outside 1..{self._upload_limit} bytes"
            elif header.kind not in (pb.REPLY_FIT, pb.REPLY_MESSAGE) and header.size != 0:
                reason = f"a {pb.ReplyKind.Name(header.kind)} reply carries no params, not {header.size} bytes"
            else:
                p.uploading = True
                self._release(p)
                return None
            self._answer(p, Failure(client_id, task.round, f"upload rejected: {reason}"))
        log.warning("round %d: rejected the upload of client %d: %s", task.round, client_id, reason)
        return reason

    def _answer(self, p: Pending, reply: Reply) -> None:
        """Close task `p` with `reply` (under the lock)."""
        del self._open[p.seq]
        self._client_open[p.task.client_id].remove(p.seq)
        self._replies.append(reply)
        self._missed[p.task.client_id] = 0
        self._release(p)
        self._cond.notify_all()

    def _release(self, p: Pending) -> None:
        """End the call its client holds while working on `p` (callable from any thread)."""
        if p.attended is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(p.attended.set)

    async def attend(self, client_id: int, seq: int, wait: float) -> str:
        """Hold the call of a client working on task `seq`, for at most `wait` s: "closed" when its reply starts to
        arrive or the task closes, "" when the wait is over. If the call breaks first (the client's process or
        connection died), the task fails at once as "disconnected"."""
        with self._cond:
            self._seen[client_id] = self._called[client_id] = time.monotonic()
            p = self._open.get(seq)
            if p is None or p.task.client_id != client_id or p.uploading or p.checking or self._done:
                return "closed"
            if p.attended is None:
                p.attended = asyncio.Event()
            attended = p.attended
        try:
            await asyncio.wait_for(attended.wait(), wait)
            return "closed"
        except TimeoutError:
            return ""
        except asyncio.CancelledError:
            self.disconnected(client_id, seq)
            raise

    def disconnected(self, client_id: int, seq: int) -> None:
        """The client's call broke while it worked on task `seq`: the task fails now, and the client is not
        selected again until it calls."""
        with self._cond:
            p = self._open.get(seq)
            if p is None or p.task.client_id != client_id or p.checking or self._done:
                return
            self._answer(p, Failure(client_id, p.task.round, "disconnected"))
            self._seen[client_id] = -1e18
        log.warning("round %d: client %d disconnected while working on its task; the task failed", p.task.round,
                    client_id)

    async def accept(self, client_id: int, header: pb.ReplyHeader, path: Path | None, size: int) -> str | None:
        """Record a client's reply to one of its open tasks (its header passed `precheck`, its bytes are in `path`);
        the reason it is rejected, or None. A rejected upload's file is deleted at once."""
        with self._cond:
            self._seen[client_id] = self._called[client_id] = time.monotonic()
            self._up += size
            p = self._open.get(header.seq)
            if p is None or p.task.client_id != client_id or p.checking:
                self.spool.discard(path)
                return f"task {header.seq} closed while the upload arrived"
            p.checking = True
        loop = asyncio.get_running_loop()
        reply, reason = await loop.run_in_executor(self._checker, self._build, client_id, p.task, header, path)
        if isinstance(reply, Update) and path is not None:  # its file goes when the update does
            lease = Lease(self.spool, path)
            for view in (reply.params, reply.extras):
                if isinstance(view, SpooledParams):
                    view.lease = lease
        else:
            self.spool.discard(path)
        with self._cond:
            if self._open.get(header.seq) is not p:
                return f"task {header.seq} closed while the reply was checked"
            self._answer(p, reply)
        if reason is not None:
            log.warning("round %d: rejected the upload of client %d: %s", p.task.round, client_id, reason)
        return reason

    def _build(self, client_id: int, task: Task, header: pb.ReplyHeader, path: Path | None
               ) -> tuple[Reply, str | None]:
        def reject(reason: str) -> tuple[Reply, str]:
            return Failure(client_id, task.round, f"upload rejected: {reason}"), reason

        kinds = {"fit": pb.REPLY_FIT, "evaluate": pb.REPLY_EVALUATE, "secagg": pb.REPLY_MESSAGE}
        if header.kind == pb.REPLY_FAILURE:
            return Failure(client_id, task.round, clean(header.reason) or "client failure"), None
        expected = pb.REPLY_MESSAGE if MESSAGE_SIZE in task.config else kinds[task.kind]
        if header.kind != expected:
            return reject(f"a {pb.ReplyKind.Name(header.kind)} reply to a task that asks for "
                          f"{pb.ReplyKind.Name(expected)}")
        if header.kind == pb.REPLY_MESSAGE:
            if header.metrics or header.num_examples:
                return reject("a message reply carries no metrics or counts (they would travel unmasked)")
            assert path is not None  # precheck: a message reply has 1..message_bytes bytes
            return Message(client_id, task.round, task.broadcast.stage, path.read_bytes()), None
        if (problem := check_metrics(header.metrics)) is not None:
            return reject(problem)
        with self._cond:
            train, test = self._counts[client_id]
        if task.kind == "evaluate":
            split = "train" if task.config.get("split") == "train" else "test"
            declared = train if split == "train" else test
            empty = header.num_examples == declared == 0 and not header.metrics  # joined with no such rows
            if not (0 < header.num_examples <= declared or empty):
                return reject(f"num_examples {header.num_examples} is outside 1..{declared}, the {split} examples "
                              "the client joined with")
            return Evaluation(client_id, task.round, int(header.num_examples), dict(header.metrics)), None
        if header.num_examples != train:
            return reject(f"num_examples {header.num_examples} differs from the {train} it joined with")
        assert path is not None  # precheck: a fit reply carries its update
        checked, problem = check_spooled(path, task.params, task.extras, self.options.max_update_norm)
        if checked is None:
            return reject(problem or "unreadable upload")
        params, extras = checked
        return Update(client_id, task.round, params, train, dict(header.metrics), extras,
                      task.broadcast.version), None

    def max_upload_bytes(self) -> int:
        """The size limit of an upload to the open tasks (set when tasks open or close, not per upload)."""
        with self._cond:
            return self._upload_limit


def _upload_limit(task_bytes: int) -> int:
    return 2 * task_bytes + (1 << 20)


def check_metrics(metrics: Mapping[str, float]) -> str | None:
    """Why a client's metrics are refused, or None: at most MAX_METRICS, plain names, finite values, accuracies
    in [0, 1] and losses at least 0."""
    if len(metrics) > MAX_METRICS:
        return f"{len(metrics)} metrics, more than {MAX_METRICS}"
    for name, value in metrics.items():
        if not METRIC_NAME.fullmatch(name):
            return f"metric name '{clean(name, 80)}' is not 1-64 letters, digits, '_', '.' or '-'"
        if not math.isfinite(value):
            return f"metric {name} = {value} is not finite"
        if name.endswith("accuracy") and not 0.0 <= value <= 1.0:
            return f"metric {name} = {value} is outside [0, 1]"
        if name.endswith("loss") and value < 0.0:
            return f"metric {name} = {value} is negative"
    return None
