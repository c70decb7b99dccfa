"""Robust aggregators against hand computations, their order invariance, their refusal of too-small rounds, and the
median holding where the mean is pulled away by sign-flipping clients."""

import random

import pytest
import torch
from conftest import blobs, manual_partition, options, small_model
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloop import FedAvg, Sampler, simulate
from fedloop.aggregators import (
    AGGREGATORS,
    Bulyan,
    CenteredClip,
    GeometricMedian,
    Krum,
    Median,
    MultiKrum,
    NormBound,
    TrimmedMean,
    WeightedMean,
)
from fedloop.aggregators.krum import krum_scores, squared_distances
from fedloop.errors import ConfigError
from fedloop.reduction import reduce
from fedloop.types import ServerState, Update


def ups(*rows, shape=None):
    """Updates of one tensor "w" per row (client ids in order)."""
    out = []
    for i, r in enumerate(rows):
        t = torch.tensor(r, dtype=torch.float32)
        out.append(Update(i, 1, {"w": t if shape is None else t.reshape(shape)}, 10))
    return out


def agg(aggregator, updates, state=None):
    return aggregator.apply(updates, state or {})[0]["w"]


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values():
    got = agg(Median(), ups([1.0, 10.0], [3.0, -2.0], [2.0, 0.0], [100.0, 4.0]))
    assert torch.equal(got, torch.tensor([2.5, 2.0]))  # (0 + 4) / 2
    assert torch.equal(agg(Median(), ups([1.0], [7.0], [3.0])), torch.tensor([3.0]))


def test_trimmed_mean_drops_the_extremes_of_each_coordinate_even_with_ties():
    # beta 0.2 of 5 updates trims 1 at each end; ties (the two 2.0s) keep one copy in the middle
    got = agg(TrimmedMean(0.2), ups([2.0, 0.0], [2.0, 1.0], [-50.0, 2.0], [3.0, 3.0], [90.0, 4.0]))
    assert torch.allclose(got, torch.tensor([(2.0 + 2.0 + 3.0) / 3, (1.0 + 2.0 + 3.0) / 3]))


def test_krum_keeps_the_update_with_the_closest_neighbours():
    points = ups([0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.4, 0.6], [20.0, 20.0])
    d = squared_distances(points, ["w"])
    # f = 1: each score sums the n - f - 2 = 3 smallest squared distances to the others
    by_hand = []
    for i in range(6):
        others = sorted(float(d[i, j]) for j in range(6) if j != i)
        by_hand.append(sum(others[:3]))
    assert torch.allclose(krum_scores(d, 1), torch.tensor(by_hand, dtype=torch.float64))
    assert torch.equal(agg(Krum(f=1), points), torch.tensor([0.4, 0.6]))
    # multi-Krum (m = n - f = 5) averages all but the outlier
    assert torch.allclose(agg(MultiKrum(f=1), points), torch.tensor([2.4 / 5, 2.6 / 5]))


def test_bulyan_is_repeated_krum_then_a_trimmed_mean_around_the_median():
    rows = [[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]]
    # f = 1, n = 7: theta = 5 updates by repeated Krum (the outlier never), beta = 3 nearest the median
    chosen = Bulyan(f=1).select(squared_distances(ups(*rows), ["w"]))
    assert 6 not in chosen and len(chosen) == 5
    values = sorted(rows[i][0] for i in chosen)
    median = values[2]
    nearest = sorted(values, key=lambda v: abs(v - median))[:3]
    assert torch.allclose(agg(Bulyan(f=1), ups(*rows)), torch.tensor([sum(nearest) / 3]))


def test_the_geometric_median_is_a_fixed_point_of_weiszfeld():
    rows = [[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [4.0, 3.0], [50.0, 50.0]]  # the median is at no data point
    v = agg(GeometricMedian(iterations=1000, tolerance=1e-12), ups(*rows)).double()
    x = torch.tensor(rows, dtype=torch.float64)
    # the gradient of sum ||x_i - v|| vanishes at the geometric median
    grad = ((v - x) / (v - x).norm(dim=1, keepdim=True)).sum(dim=0)
    assert grad.norm() < 1e-4
    assert float((v - torch.tensor([50.0, 50.0])).norm()) > 60  # the outlier does not pull it


def test_centered_clip_moves_from_the_last_aggregate_by_at_most_tau_per_update():
    got, state = CenteredClip(tau=1.0, iterations=1).apply(ups([3.0, 4.0], [0.3, 0.4]), {"w": torch.zeros(2)})
    # clip([3,4], 1) = [0.6, 0.8]; [0.3, 0.4] is within tau
    assert torch.allclose(got["w"], torch.tensor([(0.6 + 0.3) / 2, (0.8 + 0.4) / 2]))
    assert torch.equal(state["w"], got["w"])  # the next round starts from this aggregate


def test_norm_bound_clips_each_update_then_averages():
    got = agg(NormBound(max_norm=1.0), ups([3.0, 4.0], [0.3, 0.4]))
    assert torch.allclose(got, torch.tensor([0.45, 0.6]))
    adaptive = agg(NormBound(adaptive=True, factor=1.0), ups([3.0, 4.0], [0.3, 0.4], [0.6, 0.8]))
    # median norm 1.0: [3, 4] becomes [0.6, 0.8]
    assert torch.allclose(adaptive, torch.tensor([(0.6 + 0.3 + 0.6) / 3, (0.8 + 0.4 + 0.8) / 3]))


ROBUST = [Median(), TrimmedMean(0.2), Krum(f=1), MultiKrum(f=1), Bulyan(f=1), GeometricMedian(),
          CenteredClip(), NormBound(), WeightedMean()]


@pytest.mark.parametrize("aggregator", ROBUST, ids=lambda a: a.name)
def test_the_result_does_not_depend_on_the_order_replies_arrive(aggregator):
    from fedloop.strategies.base import Strategy

    gen = torch.Generator().manual_seed(1)
    updates = [Update(c, 1, {"a": torch.randn(3, 2, generator=gen), "b": torch.randn(4, generator=gen)}, 5 + c)
               for c in range(9)]
    strategy = Strategy(aggregator=aggregator)
    params = {"a": torch.zeros(3, 2), "b": torch.zeros(4)}
    state = ServerState(0, params, agg_state=aggregator.init(params))
    first, _ = reduce(updates, strategy, state)
    shuffled = updates[:]
    random.Random(3).shuffle(shuffled)
    again, _ = reduce(shuffled, strategy, state)
    assert all(torch.equal(first.params[k], again.params[k]) for k in params)


@pytest.mark.parametrize("aggregator,n,message", [
    (Krum(f=2), 6, "needs at least 7 updates; this round has 6"), (MultiKrum(f=1), 4, "needs at least 5"),
    (Bulyan(f=1), 6, "n >= 4f \\+ 3, so it needs at least 7"), (TrimmedMean(0.2), 4, "needs at least 5"),
])
def test_a_round_too_small_for_the_assumption_is_refused(aggregator, n, message):
    with pytest.raises(ConfigError, match=message):
        agg(aggregator, ups(*[[float(i)] for i in range(n)]))
    agg(aggregator, ups(*[[float(i)] for i in range(n + 1)]))  # one more is enough


@settings(max_examples=40, deadline=None)
@given(honest=st.integers(5, 12), bad_share=st.floats(0.05, 0.45), scale=st.floats(2.0, 50.0),
       seed=st.integers(0, 2**31 - 1))
def test_under_sign_flipping_the_median_stays_near_the_honest_mean_while_the_mean_is_pulled_away(
        honest, bad_share, scale, seed):
    n_bad = max(1, int(bad_share * honest / (1 - bad_share)))
    if n_bad * 2 >= honest + n_bad:
        return
    gen = torch.Generator().manual_seed(seed)
    center = torch.randn(20, generator=gen) + 3.0
    good = [center + 0.1 * torch.randn(20, generator=gen) for _ in range(honest)]
    honest_mean = torch.stack(good).mean(dim=0)
    bad = [-scale * honest_mean for _ in range(n_bad)]
    updates = [Update(i, 1, {"w": t}, 10) for i, t in enumerate(good + bad)]
    median = Median().apply(updates, {})[0]["w"]
    mean = WeightedMean().apply(updates, {})[0]["w"]
    stack = torch.stack(good)
    # with f < n/2 every coordinate of the median lies within the honest values of that coordinate
    assert bool(((median >= stack.min(dim=0).values) & (median <= stack.max(dim=0).values)).all())
    spread = max(float((g - honest_mean).norm()) for g in good)
    assert float((mean - honest_mean).norm()) > 2 * spread


def test_every_aggregator_trains_a_model_end_to_end():
    data, part = blobs(n_train=120), manual_partition([12] * 10)
    for name, cls in AGGREGATORS.items():
        res = simulate(small_model, data, part, FedAvg(sampler=Sampler(10), aggregator=cls()), options(3, 1))
        assert res.state.round == 3, name
        assert all(torch.isfinite(v).all() for v in res.state.params.values()), name


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_reading_updates_in_small_column_chunks_gives_the_same_aggregate(name, monkeypatch):
    """The memory bound: n updates are read a column chunk at a time; the chunk size must not change the result."""
    from fedloop.aggregators import base

    gen = torch.Generator().manual_seed(0)
    updates = [Update(i, 1, {"a": torch.randn(7, 5, generator=gen), "b": torch.randn(3, generator=gen)}, 5)
               for i in range(11)]
    whole = AGGREGATORS[name]().apply(updates, {})[0]
    monkeypatch.setattr(base, "CHUNK_VALUES", 30)  # 2 columns of 11 updates per chunk
    chunked = AGGREGATORS[name]().apply(updates, {})[0]
    assert all(torch.allclose(whole[k], chunked[k], atol=1e-6) for k in whole)


def test_a_spooled_update_is_read_a_column_chunk_at_a_time_with_the_same_values(tmp_path):
    from safetensors.torch import save_file

    from fedloop.net.spool import SpooledParams

    tensors = {"w": torch.arange(60.0).reshape(4, 3, 5), "b": torch.arange(7.0)}
    save_file(tensors, tmp_path / "u.safetensors")
    spooled = SpooledParams(tmp_path / "u.safetensors", list(tensors))
    for name, t in tensors.items():
        for cols in (slice(0, 1), slice(13, 47), slice(14, 15), slice(0, t.numel()), slice(5, t.numel())):
            assert torch.equal(spooled.flat_slice(name, cols), t.reshape(-1)[cols])
    updates = [Update(i, 1, SpooledParams(tmp_path / "u.safetensors", list(tensors)), 1) for i in range(3)]
    assert torch.equal(Median().apply(updates, {})[0]["w"], tensors["w"])


def test_a_checked_upload_is_read_once_by_the_mean_and_not_by_the_overflow_bound(tmp_path, monkeypatch):
    """The upload's check records each tensor's shape and largest |value|, so that the round's compatibility check
    and overflow bound read nothing from disk and the mean reads each tensor once; the mean's bits are those of the
    same updates in memory. An upload with NaN or infinity fails the check."""
    from safetensors.torch import save_file

    from fedloop import culprits
    from fedloop.net.spool import SpooledParams, check_spooled

    gen = torch.Generator().manual_seed(0)
    reference = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}
    tensors = [{"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)} for _ in range(3)]
    spooled = []
    for i, t in enumerate(tensors):
        save_file(t, tmp_path / f"u{i}.safetensors")
        checked, why = check_spooled(tmp_path / f"u{i}.safetensors", reference, {})
        assert why is None and checked is not None
        assert checked[0].peaks == {k: float(v.abs().max()) for k, v in t.items()}
        spooled.append(Update(i, 1, checked[0], 2 + i))
    reads: list[str] = []
    read = SpooledParams.__getitem__
    monkeypatch.setattr(SpooledParams, "__getitem__", lambda self, name: reads.append(name) or read(self, name))
    assert not culprits.overflows(spooled, reference) and reads == []
    mean = WeightedMean().apply(spooled, {})[0]
    assert len(reads) == 2 * len(spooled) + 2  # each update's two tensors, and the first's for the sums' dtypes
    in_memory = WeightedMean().apply([Update(i, 1, t, 2 + i) for i, t in enumerate(tensors)], {})[0]
    assert all(torch.equal(mean[k], in_memory[k]) for k in in_memory)
    huge = {"w": torch.full((4, 3), 3e38), "b": torch.zeros(3)}  # 2 x 3e38 leaves float32
    save_file(huge, tmp_path / "huge.safetensors")
    checked, _ = check_spooled(tmp_path / "huge.safetensors", reference, {})
    assert checked is not None and culprits.overflows([Update(9, 1, checked[0], 2)], reference)
    for bad in (float("nan"), float("inf"), -float("inf")):
        save_file({"w": torch.tensor([[0.0] * 3] * 3 + [[1.0, bad, 2.0]]), "b": torch.zeros(3)}, tmp_path / "bad.st")
        assert check_spooled(tmp_path / "bad.st", reference, {}) == (None, "tensor 'w' holds NaN or infinite values")
