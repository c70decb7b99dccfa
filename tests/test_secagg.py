"""Secure aggregation (issue 20, part 1): threshold sharing, the fixed-point ring, masks that cancel in the sum and
look uniform alone, and SecAgg+ rounds with dropouts at every stage, in one process. Real primitives from
`cryptography`; nothing here is mocked."""

import itertools
import re
import secrets
from dataclasses import replace

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from fedloop.errors import ConfigError
from fedloop.randomness import SecretStream
from fedloop.secagg import masks, shamir
from fedloop.secagg.options import SecAggOptions
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
    peers, _ = server.advertised({i: b"".join(clients[i].advertise()) for i in sorted(alive)})
    alive -= set(drop.get(2, ()))
    sent = {i: clients[i].share_keys(peers[i]) for i in sorted(alive)}
    if tamper is not None:
        tamper(sent)
    inbox, rejected = server.shared(sent)
    assert not rejected
    alive -= set(drop.get(3, ()))
    inputs = {i: clients[i].masked_input(xs[i], inbox[i]) for i in sorted(alive)}
    survivors, _ = server.masked(inputs)
    alive -= set(drop.get(4, ()))
    revealed = {i: clients[i].unmask(survivors) for i in sorted(alive)}
    total, _ = server.unmasked(revealed, size)
    plain = np.zeros(size, dtype=np.uint64)
    for i in survivors:
        plain = ring.add(plain, xs[i])
    return total, plain, {"inputs": inputs, "xs": xs, "survivors": survivors, "clients": clients}


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

    # the receiver leaves the bad share out (and says so); the others' shares still rebuild the secrets
    total, plain, seen = secagg_round(tamper=flip)
    assert np.array_equal(total, plain)
    bad = {i: c.rejected for i, c in seen["clients"].items() if c.rejected}
    assert len(bad) == 1 and "do not decrypt" in next(iter(next(iter(bad.values())).values()))

    def swap(sent):  # a ciphertext for another receiver, replayed to this one
        i = sorted(sent)[0]
        a, b = sorted(sent[i])[:2]
        sent[i][a], sent[i][b] = sent[i][b], sent[i][a]

    total, plain, seen = secagg_round(tamper=swap)
    assert np.array_equal(total, plain)
    assert sum(len(c.rejected) for c in seen["clients"].values()) == 2


def test_a_client_reveals_one_kind_of_share_per_neighbour_once():
    ring = Ring(bits=32, clip=1.0, clients=4)
    clients = {i: ClientSession(i, 1, ring, 2) for i in range(4)}
    server = ServerSession(1, ring, 2, 4)
    peers, _ = server.advertised({i: b"".join(c.advertise()) for i, c in clients.items()})
    inbox, _ = server.shared({i: c.share_keys(peers[i]) for i, c in clients.items()})
    inputs = {i: clients[i].masked_input(np.zeros(4, dtype=np.uint64), inbox[i]) for i in clients}
    survivors, _ = server.masked(inputs)
    clients[0].unmask(survivors)
    with pytest.raises(Rejected, match="asked twice"):
        clients[0].unmask(survivors - {1})  # would reveal client 1's mask key after its self-mask seed


# --- SecAgg+ carried by the simulator's fleets, through the one round loop ---

SIZES = [23, 31, 17, 40, 29, 35]


def secure_run(drops=None, once=False, rounds=1, secure=None, executor="sequential", strategy=None, wrap=None,
               **policy):
    """FedAvg over six blob clients, all asked each round, through DropAt(drops) (and `wrap` around it);
    (result, the DropAt fleet)."""
    from conftest import DropAt, blobs, manual_partition, options, small_model

    from fedloop import FedAvg, Sampler, SimOptions
    from fedloop.data.examples import Examples
    from fedloop.experiment import build_fleet
    from fedloop.loop import RoundPolicy
    from fedloop.run import train

    data = blobs(n_train=sum(SIZES), n_test=30)
    strategy = strategy or FedAvg(Sampler(clients_per_round=len(SIZES)))
    if secure is not False:
        strategy = replace(strategy, secure=secure or SecAggOptions(enabled=True, clip_range=10.0))
    fleet = DropAt(build_fleet(data, manual_partition(SIZES), strategy, small_model,
                               sim=SimOptions(executor=executor)), drops or {}, once)
    result = train(wrap(fleet) if wrap else fleet, small_model, strategy,
                   options(rounds, seed=2, policy=RoundPolicy(**policy)), test=Examples.all(data.x_test, data.y_test))
    return result, fleet


def test_a_secure_fedavg_round_in_the_simulator_is_the_plain_round_within_the_stated_error():
    plain, _ = secure_run(secure=False)
    secure, fleet = secure_run()
    bound = secure.history[0]["secagg_error_bound"]
    assert 0 < bound < 1e-6
    for k, v in plain.state.params.items():
        assert float((secure.state.params[k] - v).abs().max()) <= bound + 1e-6, k
    assert secure.history[0]["clients"] == len(SIZES)
    assert secure.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], abs=1e-5)
    # what the server saw: messages only, never an update; each masked input looks uniform and differs per round
    from fedloop.types import Message, Update

    assert not any(isinstance(r, Update) for r in fleet.replies)
    masked = [r for r in fleet.replies if isinstance(r, Message) and r.stage == "fit"]
    assert len(masked) == len(SIZES)
    counts = np.bincount(np.frombuffer(b"".join(m.data for m in masked), dtype=np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-6


@pytest.mark.parametrize("drops,included", [
    ({"secagg-advertise": [2]}, [0, 1, 3, 4, 5]),           # before advertising keys
    ({"secagg-share": [2]}, [0, 1, 3, 4, 5]),               # after advertising, before sharing
    ({"fit": [2]}, [0, 1, 3, 4, 5]),                        # after sharing: its masks are removed from its key
    ({"secagg-unmask": [2]}, [0, 1, 2, 3, 4, 5]),           # after its masked input: unmasked from its shares
    ({"secagg-share": [1], "secagg-unmask": [4]}, [0, 2, 3, 4, 5]),  # the most a threshold of 3 of 5 tolerates
])
def test_clients_dropping_at_any_stage_leave_the_exact_sum_of_the_survivors(drops, included):
    expected, _ = secure_run({"fit": [c for c in range(len(SIZES)) if c not in included]}, secure=False)
    got, _ = secure_run(drops)
    row = got.history[0]
    assert row["clients"] == len(included) and row["failures"] == sum(len(v) for v in drops.values())
    for k, v in expected.state.params.items():
        assert float((got.state.params[k] - v).abs().max()) <= row["secagg_error_bound"] + 1e-6, k


def test_too_many_dropouts_abort_the_round_which_is_redone_without_touching_the_model():
    # three of a client's five neighbours stop answering during unmask: fewer than the 3 shares its secrets need
    got, _ = secure_run({"secagg-unmask": [1, 3, 5]}, once=True)
    failed, done = got.history
    assert failed["failed"] and failed["failed_because"].startswith("secure aggregation aborted: round 1: 2 shares")
    assert done["round"] == 1 and done["clients"] == len(SIZES) and not done.get("failed")
    expected, _ = secure_run(secure=False)
    for k, v in expected.state.params.items():
        assert float((got.state.params[k] - v).abs().max()) <= done["secagg_error_bound"] + 1e-6, k


class Tamper:
    """A fleet wrapper standing for a network or a client that alters messages: `edit(reply) -> reply`."""

    def __init__(self, inner, edit):
        self.inner, self.edit = inner, edit
        self.capabilities = inner.capabilities

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def collect(self, until=None, min_replies=None):
        return [self.edit(r) for r in self.inner.collect(until, min_replies)]


def test_malformed_replayed_or_tampered_messages_are_rejected_with_a_reason_and_the_round_finishes(caplog):
    from fedloop.types import Message

    kept: dict = {}

    def edit(r):
        if not isinstance(r, Message):
            return r
        kept[(r.client_id, r.stage)] = r.data
        if r.client_id == 1 and r.stage == "secagg-share":  # cut short: not whole records
            return replace(r, data=r.data[:-1])
        if r.client_id == 2 and r.stage == "secagg-share":  # one ciphertext altered on its way to a neighbour
            data = bytearray(r.data)
            data[8 + 20] ^= 0xFF
            return replace(r, data=bytes(data))
        if r.client_id == 3 and r.stage == "secagg-unmask":  # its earlier message, replayed as this one
            return replace(r, data=kept[(3, "secagg-share")][:len(r.data)])
        return r

    got, _ = secure_run(secure=SecAggOptions(enabled=True, threshold=2, clip_range=10.0),
                        wrap=lambda fleet: Tamper(fleet, edit))
    row = got.history[0]
    reasons = {f["client"]: f["reason"] for f in row["failed_clients"]}
    assert set(reasons) == {1, 3}
    assert "secagg-share" in reasons[1] and "not a whole number" in reasons[1]
    assert "secagg-unmask" in reasons[3]
    assert row["clients"] == 5 and not row.get("failed")  # client 3's input is in; client 1 dropped at sharing
    assert "do not decrypt" in caplog.text  # the neighbour that got client 2's altered ciphertext said so
    expected, _ = secure_run({"fit": [1]}, secure=False)
    for k, v in expected.state.params.items():
        assert float((got.state.params[k] - v).abs().max()) <= row["secagg_error_bound"] + 1e-6, k


@pytest.mark.parametrize("bad,why", [
    (lambda data: bytes(32) + data[32:], "low order"),  # every agreement with it would be all zeros
    (lambda data: data[:40], "advertised 40 bytes"),
])
def test_a_client_advertising_unusable_keys_is_left_out_before_its_neighbours_use_them(bad, why):
    from fedloop.types import Message

    def edit(r):
        if isinstance(r, Message) and r.client_id == 4 and r.stage == "secagg-advertise":
            return replace(r, data=bad(r.data))
        return r

    got, _ = secure_run(wrap=lambda fleet: Tamper(fleet, edit))
    row = got.history[0]
    assert [f["client"] for f in row["failed_clients"]] == [4] and why in row["failed_clients"][0]["reason"]
    assert row["clients"] == 5 and not row.get("failed")
    expected, _ = secure_run({"fit": [4]}, secure=False)
    for k, v in expected.state.params.items():
        assert float((got.state.params[k] - v).abs().max()) <= row["secagg_error_bound"] + 1e-6, k


def test_a_client_session_answers_each_stage_once_and_in_order():
    ring = Ring(bits=32, clip=1.0, clients=4)
    c = ClientSession(0, 5, ring, 2)
    with pytest.raises(Rejected, match="asked to share in round 5, where the next step is advertise"):
        c.share_keys({})
    c.advertise()
    with pytest.raises(Rejected, match="asked to advertise"):
        c.advertise()  # a replayed advertise request would not get fresh keys for the same round


@pytest.mark.parametrize("setting,message", [
    ("aggregator.name='median'", "aggregator 'median': it is not a (weighted) sum"),
    ("strategy.name='scaffold'", "strategy 'scaffold': it reduces extras of each update"),
    ("privacy.mode='central'", "fixed denominator"),
    ("privacy.mode='dp-sgd'", "transform 'dp_sgd'"),
])
def test_parts_that_need_each_plain_update_are_refused_with_the_reason(setting, message):
    from fedloop.build import load_config
    from fedloop.errors import ConfigError

    extra = ["privacy.noise_multiplier=1.0"] if "privacy" in setting else []
    where = re.escape(setting.split("=")[0] + " = " + setting.split("=")[1].replace("'", "'")) if "privacy" in setting \
        else "secagg.enabled = true"
    expected = f"{where}: secure aggregation cannot be used with .*{re.escape(message)}"
    with pytest.raises(ConfigError, match=expected):
        load_config(None, ["secagg.enabled=true", setting, *extra])


@pytest.mark.parametrize("setting,message", [
    ("server.max_update_norm=5.0", "server.max_update_norm = 5.0: the server checks each update's norm"),
    ("attack.kind='sign_flip'", "attack.kind = 'sign_flip': it rewrites plain updates"),
    ("strategy.clients_per_round=2", "rounds of 2 clients: secure aggregation needs rounds of at least 3"),
    ("secagg.threshold=12", "secagg.threshold = 12 neighbours"),
])
def test_settings_secure_aggregation_cannot_honour_are_refused_before_the_run(setting, message):
    from fedloop.build import check_runnable, load_config
    from fedloop.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_runnable(load_config(None, ["secagg.enabled=true", setting]))


@pytest.mark.parametrize("setting,message", [
    ("secagg.neighbours=5", "needs an even degree"),
    ("secagg.bits=63", "at most 62"),
    ("secagg.clip_range=0", "greater than 0"),
    ("secagg.threshold=9", "above neighbours"),
])
def test_secagg_values_are_validated(setting, message):
    from fedloop.build import load_config
    from fedloop.errors import ConfigError

    extra = ["secagg.neighbours=6"] if "threshold" in setting else []
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["secagg.enabled=true", setting, *extra])


def test_a_fleet_that_cannot_carry_messages_is_refused_at_start():
    from conftest import options, small_model

    from fedloop import FedAvg, Sampler
    from fedloop.errors import ConfigError
    from fedloop.fleet import STAGES
    from fedloop.run import train
    from fedloop.sim.mock import MockFleet

    strategy = replace(FedAvg(Sampler(clients_per_round=3)), secure=SecAggOptions(enabled=True))
    fleet = MockFleet(small_model, [10] * 4, capabilities=frozenset({STAGES}))
    with pytest.raises(ConfigError, match="with secure aggregation needs a fleet that can carry secure aggregation's"):
        train(fleet, small_model, strategy, options(1))


@pytest.mark.parametrize("executor", ["vectorized", pytest.param("processes", marks=pytest.mark.slow)])
def test_every_executor_runs_secure_rounds_to_the_plain_result(executor):
    plain, _ = secure_run(secure=False, rounds=2)
    got, _ = secure_run(executor=executor, rounds=2)
    bound = sum(r["secagg_error_bound"] for r in got.history)
    for k, v in plain.state.params.items():
        assert float((got.state.params[k] - v).abs().max()) <= bound + 1e-5, k


# --- distributed DP: the distributed discrete Gaussian under secure aggregation ---


def test_the_discrete_gaussian_sampler_has_the_right_law():
    from fedloop.secagg.noise import discrete_gaussian

    stream = SecretStream()
    for sigma in (0.8, 3.0, 1e6):
        x = discrete_gaussian(400_000, sigma, stream)
        assert x.dtype == np.int64
        se = sigma / np.sqrt(x.size)
        assert abs(x.mean()) < 6 * se
    # small scale: the frequencies of -6..6 against exp(-x^2 / 2 sigma^2), normalised over the integers
    sigma = 1.5
    x = discrete_gaussian(400_000, sigma, stream)
    support = np.arange(-6, 7)
    weights = np.exp(-np.arange(-40, 41) ** 2 / (2 * sigma ** 2))
    p = np.exp(-support ** 2 / (2 * sigma ** 2)) / weights.sum()
    observed = np.array([(x == k).sum() for k in support])
    expected = p * x.size
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-6
    # the variance of N_Z(0, sigma^2) (the normalised sum above) against the sample's, at 6 standard errors
    var = float((np.arange(-40, 41) ** 2 * weights).sum() / weights.sum())
    assert abs(x.var() - var) < 6 * var * np.sqrt(2 / x.size)


def test_the_noise_in_the_unmasked_sum_has_the_variance_the_dropouts_allow():
    """m survivors each add N_Z(0, sigma_c^2), sigma_c = z C scale / sqrt(t + 1): the sum's noise variance is
    m / (t + 1) (z C scale)^2, at least central DP's (z C scale)^2 whenever the round finishes."""
    from fedloop.secagg.vector import RoundSpec, decode, encode

    n, size, z, c = 8, 100_000, 1.3, 0.5
    spec = RoundSpec(bits=32, clip=1.0, clients=n, max_examples=10, uniform=True, threshold=3, size=size,
                     noise_multiplier=z, l2_clip=c)
    zero = {"w": torch.zeros(size)}
    stream = SecretStream()
    for survivors in (n, 4):  # everyone, and the fewest a finished round can have
        ring = spec.ring
        server = ServerSession(1, ring, 3, n - 1)
        clients = {i: ClientSession(i, 1, ring, 3) for i in range(n)}
        peers, _ = server.advertised({i: b"".join(c_.advertise()) for i, c_ in clients.items()})
        inbox, _ = server.shared({i: c_.share_keys(peers[i]) for i, c_ in clients.items()})
        alive = list(range(survivors))
        inputs = {i: clients[i].masked_input(encode(zero, None, 10, spec, stream), inbox[i]) for i in alive}
        kept, _ = server.masked(inputs)
        total, _ = server.unmasked({i: clients[i].unmask(kept) for i in alive}, spec.length)
        noise_sum = decode(total, spec, zero, survivors, 10 * survivors).params["w"].double() * survivors
        target = survivors / 4 * (z * c) ** 2
        assert abs(float(noise_sum.var()) - target) < 6 * target * np.sqrt(2 / size), survivors
        assert abs(float(noise_sum.mean())) < 6 * np.sqrt(target / size)


def test_the_distributed_bound_is_the_gaussians_when_the_noise_is_coarse_and_its_tau_is_as_stated():
    import dp_accounting

    from fedloop.privacy.distributed import ORDERS, epsilon_of, inflation, round_rdp

    # tau by hand (Kairouz et al., Theorem 1) for a scale where it matters
    assert inflation(0.5, 3) == pytest.approx(10 * (np.exp(-2 * np.pi ** 2 * 0.25 / 2) +
                                                    np.exp(-2 * np.pi ** 2 * 0.25 * 2 / 3)), rel=1e-12)
    assert inflation(50.0, 100) == 0.0
    # sigma of many units: the sum behaves as a Gaussian of multiplier sigma sqrt(m) / sensitivity
    sensitivity, sigma, m, d = 1e6, 5e5, 10, 1000
    z = sigma * np.sqrt(m) / sensitivity
    for rounds in (1, 7):
        acc = dp_accounting.rdp.RdpAccountant(list(ORDERS))
        acc.compose(dp_accounting.GaussianDpEvent(z), rounds)
        ours = epsilon_of(rounds * round_rdp(sensitivity, sigma, m, d), 1e-5)
        assert ours == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    # a fine scale costs more than the Gaussian bound: tau d enters
    fine = round_rdp(2.0, 0.4, 3, 1000)
    assert (fine > np.asarray(ORDERS) * (2 / (0.4 * np.sqrt(3))) ** 2 / 2 + 1).all()


def distributed_run(rounds=2, threshold=None, **privacy):
    from fedloop import FedAvg, Sampler
    from fedloop.privacy.options import PrivacyOptions, privatize

    strategy = replace(FedAvg(Sampler(clients_per_round=len(SIZES))),
                       secure=SecAggOptions(enabled=True, clip_range=10.0, threshold=threshold))
    options = PrivacyOptions(mode="distributed", clip=1.0, noise_multiplier=privacy.pop("z", 1.0), **privacy)
    return secure_run(rounds=rounds, strategy=privatize(strategy, options), secure=False)[0]


def test_a_distributed_dp_run_reports_the_epsilon_of_the_noise_that_reached_the_sum():
    import dp_accounting

    from fedloop.privacy.distributed import ORDERS

    got = distributed_run(rounds=3, threshold=4)
    # six survivors, threshold four: each round's sum carries sqrt(6 / 5) times central DP's noise
    z_eff = [r["noise_multiplier_effective"] for r in got.history]
    assert z_eff == pytest.approx([np.sqrt(6 / 5)] * 3, rel=1e-3)
    acc = dp_accounting.rdp.RdpAccountant(list(ORDERS))
    acc.compose(dp_accounting.GaussianDpEvent(z_eff[0]), 3)
    assert got.history[-1]["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)
    assert got.history[-1]["train_loss"] is None  # the clients' losses are not private: not sent


def test_distributed_dp_stops_before_the_budget_and_is_refused_where_it_cannot_hold():
    from fedloop.build import load_config
    from fedloop.errors import ConfigError

    got = distributed_run(rounds=10, z=2.0, max_epsilon=5.0)
    assert got.stop_reason == "privacy_budget" and 1 < len(got.history) < 10
    assert got.history[-1]["epsilon"] <= 5.0
    with pytest.raises(ConfigError, match="privacy.mode = 'distributed' adds its noise inside secure aggregation"):
        load_config(None, ["privacy.mode='distributed'", "privacy.noise_multiplier=1.0"])
    with pytest.raises(ConfigError, match="secure_noise"):
        load_config(None, ["privacy.mode='distributed'", "privacy.noise_multiplier=1.0", "secagg.enabled=true",
                           "privacy.secure_noise=false"])


def test_a_client_of_a_secure_run_refuses_to_send_a_plain_update():
    from conftest import blobs, manual_partition, small_model

    from fedloop import FedAvg, Sampler, SimOptions
    from fedloop.experiment import build_fleet
    from fedloop.run import initial_params
    from fedloop.types import Failure

    strategy = replace(FedAvg(Sampler(clients_per_round=3)), secure=SecAggOptions(enabled=True))
    fleet = build_fleet(blobs(n_train=30), manual_partition([10, 10, 10]), strategy, small_model,
                        sim=SimOptions(executor="sequential"))
    state = strategy.init(initial_params(small_model, 0), 0)
    task = strategy.tasks(state, fleet.clients()[:1])[0]  # a fit task without secure aggregation's stages
    reply = fleet.app(0).handle(task)
    assert isinstance(reply, Failure) and "asks for a plain update" in reply.reason


def test_the_privacy_planner_describes_distributed_dp():
    from fedloop.build import load_config, privacy_options, strategy_from_config
    from fedloop.privacy.planner import plan

    cfg = load_config(None, ["privacy.mode='distributed'", "secagg.enabled=true", "privacy.target_epsilon=8.0",
                             "model.name='logreg'", "partition.num_clients=50", "strategy.clients_per_round=50"])
    lines = plan(strategy_from_config(cfg, calibrating=True), privacy_options(cfg), 40, 50, [], "digits",
                 target=8.0, num_params=650)
    text = "\n".join(lines)
    assert "distributed discrete Gaussian under secure aggregation" in text and "no amplification" in text
    assert "spends epsilon 8 in 40 rounds" in text and "noise-to-signal" in text
