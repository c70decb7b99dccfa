"""GrpcFleet: the deployment's fleet. The round loop (the same code as the simulator's) runs in the server's
main thread and waits here for replies; the gRPC handlers run as coroutines on one event loop and wait here
for tasks, so an idle client's long poll costs no thread, whatever the number of clients.

Shared state is guarded by one threading.Condition; the event loop's waiters are woken through `_changed`,
an asyncio.Event replaced on every wake-up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..params import num_bytes
from ..types import ClientInfo, Evaluation, Failure, Reply, Task, Update
from . import fedloop_pb2 as pb
from .auth import Authenticator
from .codec import encode
from .spool import Spool, check_spooled

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A task handed to a client, with its number and its params encoded once for the whole round."""

    task: Task
    seq: int
    payload: bytes


class GrpcFleet:
    """The server's view of its clients; `run` hands tasks to them and waits for replies until the deadline."""

    def __init__(self, auth: Authenticator, settings_json: str, run_id: str, round_deadline: float):
        self.auth = auth
        self.settings_json = settings_json
        self.run_id = run_id
        self.round_deadline = round_deadline
        self._cond = threading.Condition()
        self._clients: dict[int, ClientInfo] = {}
        self._pending: dict[int, Pending] = {}
        self._replies: dict[int, Reply] = {}
        self._seen: dict[int, float] = {}  # client id -> when it last called
        self._told_done: set[int] = set()
        self._seq = time.time_ns() // 1000  # distinct from any earlier server process's task numbers
        self._done = False
        self._upload_limit = _upload_limit(0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self.spool = Spool()
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="fedloop-check")  # one upload checked at a time

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the event loop the gRPC handlers run on (called from that loop)."""
        self._loop, self._changed = loop, asyncio.Event()

    def _wake(self) -> None:
        """Wake every handler waiting for a task (callable from any thread)."""
        def swap() -> None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(swap)

    # --- the Fleet protocol (called by the round loop) ---
    def clients(self) -> list[ClientInfo]:
        with self._cond:
            return sorted(self._clients.values(), key=lambda c: c.client_id)

    def is_member(self, client_id: int) -> bool:
        with self._cond:
            return client_id in self._clients

    def wait_for_clients(self, count: int, timeout: float | None = None) -> int:
        with self._cond:
            self._cond.wait_for(lambda: len(self._clients) >= count, timeout)
            return len(self._clients)

    def run(self, tasks: Sequence[Task], deadline: float | None = None) -> list[Reply]:
        """Publish the tasks, wait for every reply or the deadline; late clients become Failures."""
        def key(t: Task) -> tuple[int, int]:  # tasks sharing params and extras share their bytes
            return id(t.params), id(t.extras) if t.extras else 0

        encoded: dict[tuple[int, int], bytes] = {}
        largest = 0
        for t in tasks:
            if key(t) not in encoded:
                encoded[key(t)] = encode(t.params, t.extras)
                largest = max(largest, num_bytes(t.params) + num_bytes(t.extras))
        limit = self.round_deadline if deadline is None else deadline
        with self._cond:
            self._replies = {}
            self._pending = {}
            self.spool.clear()  # the previous round's uploads have been aggregated
            for t in tasks:
                self._seq += 1
                self._pending[t.client_id] = Pending(t, self._seq, encoded[key(t)])
            self._upload_limit = _upload_limit(largest)
            self._wake()
            self._cond.wait_for(lambda: len(self._replies) >= len(tasks), limit)
            replies = dict(self._replies)
            self._pending = {}  # from now on a reply to these tasks is stale
            self._upload_limit = _upload_limit(0)
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
            self._upload_limit = _upload_limit(0)
            self._wake()
        self.drain(drain)
        self._checker.shutdown(wait=True)
        self.spool.remove()

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
    def join(self, client_id: int, num_examples: int) -> None:
        with self._cond:
            self._clients[client_id] = ClientInfo(client_id, num_examples)
            self._cond.notify_all()
        log.info("client %d joined with %d examples", client_id, num_examples)

    async def next_task(self, client_id: int, after_seq: int, wait: float) -> Pending | str:
        """The client's open task, "done" when the run is over, or "wait" after `wait` s without one."""
        end = time.monotonic() + wait
        while True:
            with self._cond:
                self._seen[client_id] = time.monotonic()
                if self._done:
                    self._told_done.add(client_id)
                    self._cond.notify_all()
                    return "done"
                p = self._pending.get(client_id)
                if p is not None and p.seq > after_seq and client_id not in self._replies:
                    return p
                changed = self._changed
            left = end - time.monotonic()
            if left <= 0 or changed is None:
                return "wait"
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass

    async def accept(self, client_id: int, header: pb.ReplyHeader, path: Path) -> str | None:
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
        loop = asyncio.get_running_loop()
        reply, reason = await loop.run_in_executor(self._checker, self._build, client_id, task, header, path)
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
        with self._cond:
            registered = self._clients[client_id].num_examples
        if header.num_examples != registered:
            return reject(f"num_examples {header.num_examples} differs from the {registered} it joined with")
        checked, problem = check_spooled(path, task.params, task.extras)
        if checked is None:
            return reject(problem or "unreadable upload")
        params, extras = checked
        return Update(client_id, task.round, params, registered, dict(header.metrics), extras), None

    def max_upload_bytes(self) -> int:
        """The size limit of an upload to this round's tasks (set once per round, not per upload)."""
        with self._cond:
            return self._upload_limit


def _upload_limit(task_bytes: int) -> int:
    return 2 * task_bytes + (1 << 20)
