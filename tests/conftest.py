import numpy as np
import pytest
import torch

from fedloop.data.examples import Dataset
from fedloop.data.partition import Partition


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


@pytest.fixture
def data() -> Dataset:
    return blobs()
