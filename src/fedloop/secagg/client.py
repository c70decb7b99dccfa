"""A client's side of secure aggregation: the answers to the round's stages, from the session it keeps in memory.

A client's session (its key pairs and self-mask seed for one round) lives only in the memory of the process that
answers for the client: never in the state store, never on disk, never sent. It is made at the advertise stage and
dropped after unmask or when the client's next round begins; a client that loses it (a restart) cannot answer the
rest of that round and counts as dropped. Every request is checked against the session (round, order, sizes)."""

from __future__ import annotations

from collections.abc import MutableMapping

from ..randomness import SecretStream
from ..types import Params, Task
from . import wire
from .protocol import ClientSession
from .vector import RoundSpec, encode

ADVERTISE, SHARE, UNMASK = "secagg-advertise", "secagg-share", "secagg-unmask"
STAGES = (ADVERTISE, SHARE, UNMASK)
PEERS, SHARES, SURVIVORS = "secagg.peers", "secagg.shares", "secagg.survivors"
"""The task config keys of the server's messages at the share, masked-input and unmask stages."""
SESSION = "secagg.session"
"""Task config key: the server's random id of one attempt at a round (a retried round is a new session)."""

Sessions = MutableMapping[tuple[int, int], tuple[bytes, ClientSession]]
"""(client id, round) -> (session id, session)."""

_STREAM: SecretStream | None = None


def _stream() -> SecretStream:
    """This process's secret stream for stochastic rounding (made on first use, so a forked worker makes its own)."""
    global _STREAM
    if _STREAM is None:
        _STREAM = SecretStream()
    return _STREAM


def is_masked(task: Task) -> bool:
    """Whether a fit task's update must go back masked (the masked-input stage)."""
    return task.kind == "fit" and SHARES in task.config


def _session(sessions: Sessions, task: Task) -> ClientSession:
    held = sessions.get((task.client_id, task.round))
    if held is None:
        raise ValueError(f"client {task.client_id} holds no secure-aggregation session for round {task.round} (it "
                         "did not advertise keys in this process)")
    if held[0] != _bytes(task, SESSION):
        raise ValueError(f"client {task.client_id}: a request of another attempt at round {task.round} than the "
                         "one it advertised keys for (late or replayed)")
    return held[1]


def answer(task: Task, sessions: Sessions) -> bytes:
    """The client's message for an advertise, share or unmask task."""
    stage = task.broadcast.stage
    if stage == ADVERTISE:
        spec = RoundSpec.from_config(task.config)
        sid = _bytes(task, SESSION)
        for key in [k for k in sessions if k[0] == task.client_id and k[1] != task.round]:
            del sessions[key]  # an earlier round's secrets are of no more use
        held = sessions.get((task.client_id, task.round))
        if held is not None and held[0] == sid:
            raise ValueError(f"client {task.client_id} already advertised keys for this attempt at round "
                             f"{task.round} (a replayed request)")
        session = ClientSession(task.client_id, task.round, spec.ring, spec.threshold)
        sessions[(task.client_id, task.round)] = (sid, session)  # a new attempt at the round replaces the old
        share_key, mask_key = session.advertise()
        return share_key + mask_key
    session = _session(sessions, task)
    if stage == SHARE:
        peers = wire.unpack(_bytes(task, PEERS), wire.KEYS_BYTES, "peers' keys")
        out = session.share_keys({j: (k[:32], k[32:]) for j, k in peers.items()})
        return wire.pack(out, wire.CIPHERTEXT_BYTES)
    if stage == UNMASK:
        survivors = wire.unpack_ids(_bytes(task, SURVIVORS), "survivors")
        try:
            return wire.pack_reveals(session.unmask(survivors))
        finally:
            sessions.pop((task.client_id, task.round), None)
    raise ValueError(f"unknown secure-aggregation stage {stage!r}")


def masked_update(task: Task, update: Params, loss: float | None, num_examples: int, sessions: Sessions) -> bytes:
    """The client's masked input: its update, loss and count as a ring vector, masked."""
    spec = RoundSpec.from_config(task.config)
    session = _session(sessions, task)
    if spec.ring != session.ring or spec.threshold != session.threshold:
        raise ValueError(f"round {task.round}: the masked-input task's ring or threshold differs from the one the "
                         "client advertised keys for")
    ciphertexts = wire.unpack(_bytes(task, SHARES), wire.CIPHERTEXT_BYTES, "shares")
    vector = encode(update, loss, num_examples, spec, _stream())
    return wire.pack_vector(session.masked_input(vector, ciphertexts), spec.bits)


def _bytes(task: Task, key: str) -> bytes:
    value = task.config.get(key)
    if not isinstance(value, bytes):
        raise ValueError(f"task config {key!r}: expected bytes, got {type(value).__name__}")
    return value
