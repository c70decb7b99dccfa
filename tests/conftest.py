"""Shared test helpers: small data, hand-made partitions, a small model, and short runs."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedloop import RunOptions, SimOptions, simulate
from fedloop.data.examples import Dataset
from fedloop.data.partition import Partition
from fedloop.run import EvalOptions

RTOL, ATOL = 1e-5, 1e-6  # executors agree to float32 rounding of a different summation order


def blobs(n_train: int = 120, n_test: int = 40, dim: int = 5, classes: int = 3, seed: int = 0) -> Dataset:
    """Small Gaussian-blob classification data (separable enough to learn in a few rounds)."""
    g = np.random.default_rng(seed)
    centers = g.normal(0, 3, (classes, dim))
    y = g.integers(0, classes, n_train + n_test)
    x = centers[y] + g.normal(0, 1, (len(y), dim))
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    return Dataset("blobs", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)


def manual_partition(sizes: list[int], n_test_each: int = 0) -> Partition:
    """Contiguous client partitions of the given sizes (no shuffling: easy to compute by hand)."""
    train, test, start = [], [], 0
    for s in sizes:
        train.append(np.arange(start, start + s))
        start += s
    for _ in sizes:
        test.append(np.arange(start, start + n_test_each))
        start += n_test_each
    return Partition("manual", train, test, "train")


def small_model() -> nn.Module:
    """The 5 -> 8 -> 3 tanh MLP most tests train."""
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def options(rounds: int, seed: int = 0, federated: bool = False, **kw) -> RunOptions:
    """Run options for a short run (no federated evaluation unless asked)."""
    return RunOptions(rounds=rounds, seed=seed, eval=EvalOptions(federated=federated), **kw)


def run_sizes(strategy, sizes, executor="sequential", rounds=3, seed=5, model=small_model, loss=F.cross_entropy,
              engine="local", data=None, **kw):
    """`strategy` over clients of the given sizes of blob data."""
    data = data if data is not None else blobs(n_train=sum(sizes))
    return simulate(model, data, manual_partition(sizes), strategy, options(rounds, seed, **kw), loss_fn=loss,
                    sim=SimOptions(executor=executor, engine=engine))


def assert_close(a, b, rtol=RTOL, atol=ATOL):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol)


def assert_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def data() -> Dataset:
    return blobs()
