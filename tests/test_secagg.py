"""Secure aggregation (issue 20, part 1): threshold sharing, the fixed-point ring, masks that cancel in the sum and
look uniform alone, and SecAgg+ rounds with dropouts at every stage, in one process. Real primitives from
`cryptography`; nothing here is mocked."""

import itertools
import secrets

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from fedloop.errors import ConfigError
from fedloop.randomness import SecretStream
from fedloop.secagg import masks, shamir
from fedloop.secagg.protocol import ClientSession, Rejected, SecAggAbort, ServerSession
from fedloop.secagg.ring import Ring


def test_any_threshold_of_the_shares_gives_the_secret_back_and_fewer_do_not():
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 4, range(1, 8))
    for subset in itertools.combinations(shares, 4):
        assert shamir.combine({i: shares[i] for i in subset}, 4, 32) == secret
    with pytest.raises(ValueError, match="3 shares; the secret needs 4"):
        shamir.combine({i: shares[i] for i in (1, 2, 3)}, 4, 32)
    again = shamir.split(secret, 4, range(1, 8))
    assert again != shares  # fresh random coefficients each time
    with pytest.raises(ConfigError, match="threshold 8"):
        shamir.split(secret, 8, range(1, 8))
    with pytest.raises(ConfigError, match="distinct ids >= 1"):
        shamir.split(secret, 2, [0, 1, 2])


def test_shares_of_two_secrets_do_not_combine_into_either():
    a, b = secrets.token_bytes(32), secrets.token_bytes(32)
    sa, sb = shamir.split(a, 3, range(1, 6)), shamir.split(b, 3, range(1, 6))
    mixed = {1: sa[1], 2: sa[2], 3: sb[3]}
    try:
        got = shamir.combine(mixed, 3, 32)
    except ValueError:
        return
    assert got not in (a, b)


def test_the_ring_sum_decodes_to_the_sum_within_the_stated_bound_and_never_wraps():
    stream = SecretStream()
    ring = Ring(bits=32, clip=1.0, clients=50)
    xs = [torch.empty(1000).uniform_(-1.5, 1.5) for _ in range(50)]
    total = np.zeros(1000, dtype=np.uint64)
    for x in xs:
        total = ring.add(total, ring.encode(x, stream))
    exact = sum(x.clamp(-1, 1).double() for x in xs).numpy()
    err = np.abs(ring.decode_sum(total) - exact).max()
    assert err < ring.error_bound() and ring.error_bound() < 1e-5
    for extreme in (1.0, -1.0):  # every client at the edge of the range: the sum still decodes
        total = np.zeros(10, dtype=np.uint64)
        for _ in range(50):
            total = ring.add(total, ring.encode(torch.full((10,), extreme), stream))
        assert np.abs(ring.decode_sum(total) - 50 * extreme).max() < ring.error_bound()
    with pytest.raises(ValueError, match="raise bits"):
        Ring(bits=8, clip=10.0, clients=1000)


def test_stochastic_rounding_is_unbiased():
    stream = SecretStream()
    ring = Ring(bits=16, clip=1.0, clients=1)
    x = torch.full((200_000,), 0.3 / ring.scale)  # 0.3 of a unit: rounds to 0 or 1
    units = ring.decode_sum(ring.encode(x, stream)) * ring.scale
    assert set(np.round(units).tolist()) == {0.0, 1.0}
    sigma = np.sqrt(0.3 * 0.7 / units.size)
    assert abs(units.mean() - 0.3) < 6 * sigma


def test_pairwise_masks_cancel_in_the_sum_and_a_masked_vector_looks_uniform():
    ring = Ring(bits=32, clip=1.0, clients=5)
    stream = SecretStream()
    keys = {i: X25519PrivateKey.generate() for i in range(1, 6)}
    pub = {i: masks.public_bytes(k) for i, k in keys.items()}
    assert masks.derive(keys[1], pub[2], "mask", 7) == masks.derive(keys[2], pub[1], "mask", 7)
    assert masks.derive(keys[1], pub[2], "mask", 7) != masks.derive(keys[1], pub[2], "mask", 8)  # per round
    assert masks.derive(keys[1], pub[2], "mask", 7) != masks.derive(keys[1], pub[2], "share", 7)  # per purpose
    n = 250_000
    xs = {i: ring.encode(torch.empty(n).uniform_(-1, 1), stream) for i in keys}
    self_seeds = {i: secrets.token_bytes(32) for i in keys}
    sent = {i: masks.masked(xs[i], i, self_seeds[i],
                            {j: masks.derive(keys[i], pub[j], "mask", 7) for j in keys if j != i}, ring)
            for i in keys}
    total = np.zeros(n, dtype=np.uint64)
    for y in sent.values():
        total = ring.add(total, y)
    for seed in self_seeds.values():
        total = ring.sub(total, masks.expand(seed, n, ring))
    plain = np.zeros(n, dtype=np.uint64)
    for x in xs.values():
        plain = ring.add(plain, x)
    assert np.array_equal(total, plain)  # exactly: integers mod 2^32
    # what the server holds of one client: its bytes are uniform (chi-square over the 256 byte values)
    low32 = sent[3].astype(np.uint32).view(np.uint8)
    counts = np.bincount(low32, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-6
    assert not np.array_equal(sent[3], xs[3])



def secagg_round(n=8, degree=6, threshold=3, size=5000, drop=None, tamper=None, round=3):
    """One SecAgg+ round among n clients; `drop` maps a stage (1-4) to the clients that stop answering before it.
    Returns the server's ring sum, the plain ring sum of the survivors' inputs, and everything the server saw."""
    drop = drop or {}
    ring = Ring(bits=32, clip=1.0, clients=n)
    stream = SecretStream()
    clients = {i: ClientSession(i, round, ring, threshold) for i in range(n)}
    xs = {i: ring.encode(torch.empty(size).uniform_(-1, 1), stream) for i in clients}
    server = ServerSession(round, ring, threshold, degree)
    alive = set(clients) - set(drop.get(1, ()))
    peers = server.advertised({i: clients[i].advertise() for i in sorted(alive)})
    alive -= set(drop.get(2, ()))
    sent = {i: clients[i].share_keys(peers[i]) for i in sorted(alive)}
    if tamper is not None:
        tamper(sent)
    inbox = server.shared(sent)
    alive -= set(drop.get(3, ()))
    inputs = {i: clients[i].masked_input(xs[i], inbox[i]) for i in sorted(alive)}
    survivors = server.masked(inputs)
    alive -= set(drop.get(4, ()))
    revealed = {i: clients[i].unmask(survivors) for i in sorted(alive)}
    total = server.unmasked(revealed, size)
    plain = np.zeros(size, dtype=np.uint64)
    for i in survivors:
        plain = ring.add(plain, xs[i])
    return total, plain, {"inputs": inputs, "xs": xs, "survivors": survivors}


@pytest.mark.parametrize("drop", [
    {},                      # nobody drops
    {1: [5]},                # before advertising keys
    {2: [2]},                # after advertising, before sharing
    {3: [0, 6]},             # after sharing, before the masked input: their masks are removed from the keys
    {4: [1]},                # after the masked input, during unmask
    {2: [7], 3: [3], 4: [4]},  # at every stage at once
])
def test_the_unmasked_sum_is_the_survivors_exact_ring_sum_whoever_drops(drop):
    total, plain, seen = secagg_round(drop=drop)
    assert np.array_equal(total, plain)
    for i, y in seen["inputs"].items():  # the server never holds a plain input
        assert not np.array_equal(y, seen["xs"][i])


def test_the_complete_graph_for_small_rounds_and_a_sparse_one_for_large():
    from fedloop.secagg.protocol import neighbours

    keys = {i: (bytes([i]) * 32, bytes([i + 1]) * 32) for i in range(40)}
    graph = neighbours(list(keys), 6, keys)
    assert all(len(v) == 6 and i not in v for i, v in graph.items())
    assert all(i in graph[j] for i, v in graph.items() for j in v)  # symmetric
    assert neighbours(list(range(5)), 6, {})[0] == [1, 2, 3, 4]
    total, plain, _ = secagg_round(n=40, degree=6, threshold=4, size=100, drop={3: [5, 17]})
    assert np.array_equal(total, plain)


def test_too_many_dropouts_abort_the_round_cleanly():
    with pytest.raises(SecAggAbort, match="shares of client"):
        # 5 of 8 stop answering during unmask: someone's secret is left with fewer than 3 shares
        secagg_round(n=8, degree=4, threshold=3, drop={4: [1, 2, 6, 7, 5]})
    with pytest.raises(SecAggAbort, match="masked inputs; the threshold is 3"):
        secagg_round(n=8, degree=4, threshold=3, drop={3: [0, 1, 2, 3, 4, 5]})


def test_a_tampered_or_replayed_share_is_rejected():
    def flip(sent):
        i = sorted(sent)[0]
        j = sorted(sent[i])[0]
        blob = bytearray(sent[i][j])
        blob[-1] ^= 1
        sent[i][j] = bytes(blob)

    with pytest.raises(Rejected, match="do not decrypt"):
        secagg_round(tamper=flip)

    def swap(sent):  # a ciphertext for another receiver, replayed to this one
        i = sorted(sent)[0]
        a, b = sorted(sent[i])[:2]
        sent[i][a], sent[i][b] = sent[i][b], sent[i][a]

    with pytest.raises(Rejected, match="do not decrypt"):
        secagg_round(tamper=swap)


def test_a_client_reveals_one_kind_of_share_per_neighbour_once():
    ring = Ring(bits=32, clip=1.0, clients=4)
    clients = {i: ClientSession(i, 1, ring, 2) for i in range(4)}
    server = ServerSession(1, ring, 2, 4)
    peers = server.advertised({i: c.advertise() for i, c in clients.items()})
    inbox = server.shared({i: c.share_keys(peers[i]) for i, c in clients.items()})
    inputs = {i: clients[i].masked_input(np.zeros(4, dtype=np.uint64), inbox[i]) for i in clients}
    survivors = server.masked(inputs)
    clients[0].unmask(survivors)
    with pytest.raises(Rejected, match="asked twice"):
        clients[0].unmask(survivors - {1})  # would reveal client 1's mask key after its self-mask seed
