"""The server's side of a SecAgg+ round over any fleet that carries messages: the strategy's fit tasks become the
masked-input stage, with an advertise and a share stage before them and an unmask stage after.

Each stage is one exchange of the fleet (the round deadline applies to each). A reply that is not the message its
stage asks for (the wrong size, malformed records, shares for clients that are not the sender's neighbours, a
reveal the round does not ask for) is rejected with the reason logged, and its client counts as dropped from that
stage on; late and replayed replies never reach this module (the fleet answers only open tasks). A round that
cannot finish (too few clients or shares, shares that disagree, masked counts that do not add up) aborts: it
releases nothing, and the loop records it as a failed round and runs it again as the round policy says.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from ..fleet import MESSAGE_SIZE, Fleet, run
from ..types import Broadcast, ClientInfo, Failure, Message, Params, Reply, Task
from . import wire
from .client import ADVERTISE, PEERS, SESSION, SHARE, SHARES, SURVIVORS, UNMASK
from .options import SecAggOptions
from .protocol import SecAggAbort, ServerSession
from .vector import RoundSpec, SecureSum, decode

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class SecureRound:
    """A round's outcome: the sum (None when it aborted or nobody was asked), the clients that dropped or were
    rejected, and why it aborted."""

    result: SecureSum | None
    failures: list[Failure] = field(default_factory=list)
    abort: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage (each exchange, and the server's unmasking work)."""


def round_spec(options: SecAggOptions, tasks: Sequence[Task], counts: Mapping[int, int], uniform: bool,
               reference: Params, noise: tuple[float, float] = (0.0, 0.0)) -> RoundSpec:
    """The spec of a round of `tasks`, whose clients declared these sample `counts`."""
    return RoundSpec(options.bits, float(options.clip_range), len(tasks),
                     max(counts.get(t.client_id, 0) for t in tasks), uniform, options.threshold_for(len(tasks)),
                     sum(v.numel() for v in reference.values()), float(noise[0]), float(noise[1]))


def secure_exchange(options: SecAggOptions, fleet: Fleet, tasks: Sequence[Task], clients: Sequence[ClientInfo],
                    uniform: bool, deadline: float | None, noise: tuple[float, float] = (0.0, 0.0)) -> SecureRound:
    """Run the fit `tasks` of one round as a SecAgg+ round; the sum of the survivors' updates is all it keeps.
    `noise`: distributed DP's (noise multiplier, L2 clip norm), (0, 0) for none."""
    if not tasks:
        return SecureRound(None)
    out = SecureRound(None)
    first = tasks[0]
    n = len(tasks)
    counts = {c.client_id: c.num_examples for c in clients}
    if (why := options.unfit(n)) is not None:
        return SecureRound(None, abort=why)
    try:
        spec = round_spec(options, tasks, counts, uniform, first.params, noise)
    except ValueError as exc:
        return SecureRound(None, abort=str(exc))
    server = ServerSession(first.round, spec.ring, spec.threshold, options.degree(n))
    base = {**spec.to_config(), SESSION: secrets.token_bytes(16)}

    def timed(key: str, name: str, asked: Sequence[Task]) -> dict[int, bytes]:
        """One exchange (its seconds in out.timings[key]): the messages of the clients that answered it, the others
        recorded as failures of stage `name`."""
        start = time.perf_counter()
        got = _messages(run(fleet, asked, deadline), name, out)
        out.timings[key] = time.perf_counter() - start
        return got

    def stage(name: str, ids: Sequence[int], config: Callable[[int], dict], size: Callable[[int], int]
              ) -> dict[int, bytes]:
        shared = Broadcast(first.broadcast.version, {}, {}, name)
        return timed(name, name, [Task(i, first.round, "secagg", shared, 0,
                                       {**base, **config(i), MESSAGE_SIZE: size(i)}) for i in ids])

    def reject(rejected: dict[int, str], name: str) -> None:
        for i, why in sorted(rejected.items()):
            log.warning("round %d: secure aggregation, %s: client %d: %s", first.round, name, i, why)
            out.failures.append(Failure(i, first.round, f"secure aggregation, {name}: {why}"))

    try:
        got = stage(ADVERTISE, [t.client_id for t in tasks], lambda i: {}, lambda i: wire.KEYS_BYTES)
        peers, rejected = server.advertised(got)
        reject(rejected, ADVERTISE)
        got = stage(SHARE, sorted(peers), lambda i: {PEERS: wire.pack({j: a + b for j, (a, b) in peers[i].items()},
                                                                       wire.KEYS_BYTES)},
                    lambda i: len(peers[i]) * (wire.ID_BYTES + wire.CIPHERTEXT_BYTES))
        sent, rejected = _parsed(got, lambda m: wire.unpack(m, wire.CIPHERTEXT_BYTES, "shares"))
        inbox, more = server.shared(sent)
        reject({**rejected, **more}, SHARE)
        vector_bytes = spec.length * wire.word_bytes(spec.bits)
        fit = [replace(t, config={**t.config, **base, SHARES: wire.pack(inbox[t.client_id], wire.CIPHERTEXT_BYTES),
                                  MESSAGE_SIZE: vector_bytes})
               for t in tasks if t.client_id in inbox]
        got = timed("secagg-masked-input", "masked input", fit)
        rejected = {}
        for i in sorted(got):
            try:
                why = server.receive(i, wire.unpack_vector(got.pop(i), spec.length, spec.bits, "masked input"))
            except wire.Malformed as exc:
                why = str(exc)
            if why is not None:
                rejected[i] = why
        reject(rejected, "masked input")
        survivors, _ = server.masked()
        listed = wire.pack_ids(survivors)
        got = stage(UNMASK, sorted(survivors), lambda i: {SURVIVORS: listed},
                    lambda i: sum(1 for j in server.graph[i] if j in server.shares) * (wire.ID_BYTES +
                                                                                     wire.REVEAL_BYTES))
        revealed, rejected = _parsed(got, lambda m: wire.unpack_reveals(m, "unmask shares"))
        start = time.perf_counter()
        total, more = server.unmasked(revealed, spec.length)
        reject({**rejected, **more}, UNMASK)
        out.result = decode(total, spec, first.params, len(survivors), sum(counts[i] for i in survivors))
        out.timings["secagg-server-unmasking"] = time.perf_counter() - start
    except (SecAggAbort, ValueError) as exc:
        out.abort = str(exc)
        log.warning("round %d: secure aggregation aborted: %s", first.round, exc)
    return out


def _parsed(got: Mapping[int, bytes], parse: Callable[[bytes], T]) -> tuple[dict[int, T], dict[int, str]]:
    """Each client's message parsed, and the clients whose message is malformed, with why."""
    parsed, rejected = {}, {}
    for i, m in got.items():
        try:
            parsed[i] = parse(m)
        except wire.Malformed as exc:
            rejected[i] = str(exc)
    return parsed, rejected


def _messages(replies: Sequence[Reply], stage: str, out: SecureRound) -> dict[int, bytes]:
    """The messages among `replies`; the failures go to `out`."""
    got = {}
    for r in replies:
        if isinstance(r, Message):
            got[r.client_id] = r.data
        else:
            reason = r.reason if isinstance(r, Failure) else f"a {type(r).__name__} instead of a message"
            out.failures.append(Failure(r.client_id, r.round, f"secure aggregation, {stage}: {reason}"))
    return got
