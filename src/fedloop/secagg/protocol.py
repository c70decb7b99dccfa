"""One round of SecAgg+ (Bell et al., CCS 2020) between clients and a server, as plain messages, so that any fleet
can carry them: the server learns the ring sum of the surviving clients' vectors and nothing else about any one.

Stages, with the set of clients that answered each (U1 >= U2 >= U3 >= U4):
  1. advertise   each client sends two X25519 public keys (one for share encryption, one for masks);
  2. share keys  each client Shamir-shares its self-mask seed and its mask private key among its neighbours
                 (a Harary graph of degree `neighbours` over a permutation of U1) and sends each neighbour its
                 shares encrypted with AES-GCM under a key both derive (the round, stage, sender and receiver are
                 the associated data, so a share replayed from another round or pair does not decrypt);
  3. masked input each client sends its vector plus its self mask plus the pairwise masks with its neighbours in U2;
  4. unmask      each client in U3 reveals, for every neighbour in U2, the share of its self-mask seed if that
                 neighbour sent its masked input (in U3), else the share of its mask key, never both;
then the server removes the survivors' self masks and the dropped clients' pairwise masks. A round where some
secret has fewer than `threshold` shares aborts (SecAggAbort): nothing of it is released.

Trust model of this part: an honest-but-curious server that follows the protocol, and clients that do not collude
with it beyond the threshold. The neighbour graph is drawn from a hash of every advertised key, so the server cannot
choose it freely after the keys are known; a malicious server (one that lies about who dropped) is not covered.
Signatures on the advertised keys (the paper's active-security variant) are not built.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import masks, shamir
from .ring import Ring
from .wire import CIPHERTEXT_BYTES, SHARE_BYTES

log = logging.getLogger(__name__)


class SecAggAbort(Exception):
    """The round cannot finish: too few clients or shares for some secret; nothing of it is released."""


class Rejected(Exception):
    """A message that fails its checks (wrong round or stage, unknown sender, tampered or replayed ciphertext)."""


def holder(client_id: int) -> int:
    """A client's x-coordinate in Shamir sharing (ids start at 0; shares need x >= 1)."""
    return client_id + 1


def neighbours(ids: list[int], degree: int, keys: dict[int, tuple[bytes, bytes]]) -> dict[int, list[int]]:
    """A Harary graph of the given even degree over a permutation of `ids` seeded by a hash of every advertised key
    (every id its degree / 2 nearest on each side of the permuted ring); the complete graph when degree >= n - 1."""
    order = sorted(ids)
    if degree >= len(order) - 1:
        return {i: [j for j in order if j != i] for i in order}
    digest = hashlib.sha256(b"".join(i.to_bytes(8, "big") + c + s for i, (c, s) in sorted(keys.items()))).digest()
    perm = np.random.Generator(np.random.PCG64(int.from_bytes(digest, "big"))).permutation(order).tolist()
    half = degree // 2
    n = len(perm)
    out: dict[int, list[int]] = {}
    for pos, i in enumerate(perm):
        out[i] = sorted({perm[(pos + d) % n] for d in range(-half, half + 1) if d != 0})
    return out


def _aad(round: int, sender: int, receiver: int) -> bytes:
    return f"fedloop secagg shares round {round} from {sender} to {receiver}".encode()


@dataclass
class ClientSession:
    """A client's side of one round: its keys and seeds never leave it except as shares to its neighbours."""

    client_id: int
    round: int
    ring: Ring
    threshold: int
    share_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    mask_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    self_seed: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    received: dict[int, bytes] = field(default_factory=dict)
    stage: str = "advertise"
    """The next request this session answers: each is answered once, in order ("done" after unmask)."""
    rejected: dict[int, str] = field(default_factory=dict)
    """Neighbours whose shares did not decrypt at unmask (tampered, or replayed from another round or pair)."""

    def _step(self, asked: str, then: str) -> None:
        if self.stage != asked:
            raise Rejected(f"client {self.client_id}: asked to {asked} in round {self.round}, where the next "
                           f"step is {self.stage} (a replayed or out-of-order request)")
        self.stage = then

    def advertise(self) -> tuple[bytes, bytes]:
        """Stage 1: (share-encryption public key, mask public key)."""
        self._step("advertise", "share")
        return masks.public_bytes(self.share_key), masks.public_bytes(self.mask_key)

    def share_keys(self, peers: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Stage 2: given the neighbours' advertised keys, each neighbour's encrypted shares of this client's
        self-mask seed and mask private key."""
        self._step("share", "mask")
        if self.client_id in peers or len(peers) < self.threshold:
            raise SecAggAbort(f"client {self.client_id}: {len(peers)} neighbours; the threshold is {self.threshold}")
        self.peers = dict(peers)
        ids = [holder(j) for j in sorted(peers)]
        mask_private = self.mask_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                   serialization.NoEncryption())
        b = shamir.split(self.self_seed, self.threshold, ids)
        s = shamir.split(mask_private, self.threshold, ids)
        out = {}
        for j, (share_pub, _) in sorted(peers.items()):
            key = masks.derive(self.share_key, share_pub, "share", self.round)
            plain = b[holder(j)].to_bytes(SHARE_BYTES, "big") + s[holder(j)].to_bytes(SHARE_BYTES, "big")
            nonce = os.urandom(12)
            out[j] = nonce + AESGCM(key).encrypt(nonce, plain, _aad(self.round, self.client_id, j))
        return out

    def masked_input(self, x: np.ndarray, ciphertexts: dict[int, bytes]) -> np.ndarray:
        """Stage 3: given the shares sent to this client by its neighbours in U2, its vector (ring residues)
        masked by its self mask and its pairwise masks with those neighbours."""
        self._step("mask", "unmask")
        unknown = set(ciphertexts) - set(self.peers)
        if unknown:
            raise Rejected(f"client {self.client_id}: shares from non-neighbours {sorted(unknown)}")
        if len(ciphertexts) < self.threshold:
            raise SecAggAbort(f"client {self.client_id}: shares from {len(ciphertexts)} neighbours; "
                              f"the threshold is {self.threshold}")
        self.received = dict(ciphertexts)
        pair_seeds = {j: masks.derive(self.mask_key, self.peers[j][1], "mask", self.round) for j in ciphertexts}
        return masks.masked(x, self.client_id, self.self_seed, pair_seeds, self.ring)

    def unmask(self, survivors: set[int]) -> dict[int, tuple[str, int]]:
        """Stage 4: for each neighbour in U2, the share of its self-mask seed ("b") if it is a survivor, else of
        its mask key ("s"). Asked once: a second request (which could reveal both of one client) is refused. Shares
        that do not decrypt are left out, with the reason in `rejected` and the log."""
        if self.stage == "done":
            raise Rejected(f"client {self.client_id}: unmask was asked twice in round {self.round}")
        self._step("unmask", "done")
        if len(survivors) < self.threshold:
            raise SecAggAbort(f"{len(survivors)} survivors; the threshold is {self.threshold}")
        out = {}
        for j, blob in sorted(self.received.items()):
            key = masks.derive(self.share_key, self.peers[j][0], "share", self.round)
            try:
                plain = AESGCM(key).decrypt(blob[:12], blob[12:], _aad(self.round, j, self.client_id))
            except InvalidTag:
                self.rejected[j] = (f"the shares from client {j} do not decrypt (tampered, or from another round "
                                    "or pair)")
                log.warning("round %d: client %d: %s", self.round, self.client_id, self.rejected[j])
                continue
            b, s = plain[:SHARE_BYTES], plain[SHARE_BYTES:]
            out[j] = ("b", int.from_bytes(b, "big")) if j in survivors else ("s", int.from_bytes(s, "big"))
        return out


@dataclass
class ServerSession:
    """The server's side of one round: it routes messages and learns only the sum."""

    round: int
    ring: Ring
    threshold: int
    degree: int
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    graph: dict[int, list[int]] = field(default_factory=dict)
    shares: dict[int, dict[int, bytes]] = field(default_factory=dict)
    survivors: set[int] = field(default_factory=set)
    """U3: the clients whose masked inputs were received."""
    total: np.ndarray | None = None
    """The ring sum of the masked inputs, added as they arrive (the server never holds them all at once)."""

    def advertised(self, keys: dict[int, bytes]) -> tuple[dict[int, dict[int, tuple[bytes, bytes]]], dict[int, str]]:
        """After stage 1: each client's neighbours' keys (U1 = the senders of two valid X25519 public keys, 64
        bytes), and the messages rejected, with why (a low-order key would give its neighbours an all-zero
        agreement: one client could make them all fail)."""
        rejected: dict[int, str] = {}
        for i, m in keys.items():
            if len(m) != 64:
                rejected[i] = f"advertised {len(m)} bytes; two X25519 public keys are 64"
            elif not (masks.usable(m[:32]) and masks.usable(m[32:])):
                rejected[i] = "an advertised key of low order (its agreements would all be zero)"
        valid = {i: (m[:32], m[32:]) for i, m in keys.items() if i not in rejected}
        if len(valid) < self.threshold + 1:
            raise SecAggAbort(f"{len(valid)} clients advertised keys; the round needs {self.threshold + 1}")
        self.keys = valid
        self.graph = neighbours(list(valid), self.degree, valid)
        return {i: {j: valid[j] for j in self.graph[i]} for i in valid}, rejected

    def shared(self, sent: dict[int, dict[int, bytes]]) -> tuple[dict[int, dict[int, bytes]], dict[int, str]]:
        """After stage 2: what each client in U2 (the senders whose messages pass) receives, the ciphertexts
        addressed to it; and the messages rejected, with why."""
        rejected: dict[int, str] = {}
        for i, out in sent.items():
            if i not in self.keys:
                rejected[i] = "shares from a client that advertised no keys"
            elif set(out) != set(self.graph[i]):
                rejected[i] = f"shares for clients {sorted(out)[:10]}, not for its {len(self.graph[i])} neighbours"
            elif any(len(c) != CIPHERTEXT_BYTES for c in out.values()):
                rejected[i] = f"a ciphertext that is not {CIPHERTEXT_BYTES} bytes"
        self.shares = {i: out for i, out in sent.items() if i not in rejected}
        return {j: {i: self.shares[i][j] for i in self.shares if j in self.shares[i]} for j in self.shares}, rejected

    def receive(self, i: int, y: np.ndarray) -> str | None:
        """Add one masked input to the running sum; why it is rejected, or None."""
        if i not in self.shares:
            return "a masked input from a client that did not share keys"
        if i in self.survivors:
            return "a second masked input"
        self.total = y.copy() if self.total is None else self.ring.add(self.total, y)
        self.survivors.add(i)
        return None

    def masked(self, inputs: dict[int, np.ndarray] | None = None) -> tuple[set[int], dict[int, str]]:
        """After stage 3 (the inputs received one by one, or given here): U3, to whom the unmask request goes; and
        the inputs rejected."""
        rejected = {i: why for i, y in (inputs or {}).items() if (why := self.receive(i, y)) is not None}
        if len(self.survivors) < self.threshold + 1:  # each survivor's seed is rebuilt from t other survivors' shares
            raise SecAggAbort(f"{len(self.survivors)} masked inputs; the threshold is {self.threshold}, so a round "
                              f"needs {self.threshold + 1}")
        return set(self.survivors), rejected

    def unmasked(self, revealed: dict[int, dict[int, tuple[str, int]]], size: int
                 ) -> tuple[np.ndarray, dict[int, str]]:
        """After stage 4: the ring sum of the survivors' vectors, and the reveals rejected (SecAggAbort when a
        secret lacks shares, or its shares disagree)."""
        survivors, dropped = set(self.survivors), set(self.shares) - set(self.survivors)
        wanted: dict[tuple[str, int], dict[int, int]] = {}
        rejected: dict[int, str] = {}
        for i, shares in sorted(revealed.items()):
            if i not in survivors:
                rejected[i] = "unmask shares from a client that sent no masked input"
                continue
            for j, (kind, _) in shares.items():
                if j not in self.graph.get(i, ()) or j not in self.shares or kind != ("b" if j in survivors else "s"):
                    rejected[i] = f"a {kind!r} share of client {j}, which the round does not ask it for"
                    break
            else:
                for j, (kind, value) in shares.items():
                    wanted.setdefault((kind, j), {})[holder(i)] = value
        total = self.total if self.total is not None else np.zeros(size, dtype=np.uint64)
        for j in sorted(survivors):
            seed = self._secret(wanted, "b", j)
            total = self.ring.sub(total, masks.expand(seed, size, self.ring))
        for j in sorted(dropped):
            key = X25519PrivateKey.from_private_bytes(self._secret(wanted, "s", j))
            for k in self.graph[j]:
                if k in survivors:  # k got j's shares in stage 2, so it masked with j
                    seed = masks.derive(key, self.keys[k][1], "mask", self.round)
                    total = masks.pair(total, seed, k, j, self.ring, remove=True)
        return total, rejected

    def _secret(self, wanted: dict[tuple[str, int], dict[int, int]], kind: str, j: int) -> bytes:
        got = wanted.get((kind, j), {})
        what = "self-mask seed" if kind == "b" else "mask key"
        if len(got) < self.threshold:
            raise SecAggAbort(f"round {self.round}: {len(got)} shares of client {j}'s {what}; the threshold is "
                              f"{self.threshold}")
        if not shamir.consistent(got, self.threshold):
            raise SecAggAbort(f"round {self.round}: the shares of client {j}'s {what} disagree (a neighbour sent a "
                              "wrong share)")
        try:
            return shamir.combine(got, self.threshold, 32)
        except ValueError as exc:
            raise SecAggAbort(f"round {self.round}: client {j}'s {what}: {exc}") from None
