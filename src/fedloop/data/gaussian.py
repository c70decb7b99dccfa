"""Gaussian features labelled by a fixed random linear teacher: data that can be generated per client,
on demand, from a seed (for populations far larger than memory)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .examples import Dataset


@dataclass(frozen=True)
class GaussianTeacher:
    """x ~ N(0, I_dim); y = argmax(x W + b) with W, b ~ N(0, 1) drawn once from `seed`."""

    dim: int = 60
    num_classes: int = 10
    seed: int = 0

    def teacher(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0x7EAC])
        return rng.normal(0, 1, (self.dim, self.num_classes)), rng.normal(0, 1, self.num_classes)

    def sample(self, n: int, key: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """n labelled rows drawn from the seed sequence `key` (the same key gives the same rows)."""
        w, b = self.teacher()
        x = np.random.default_rng(list(key)).normal(0, 1, (n, self.dim))
        y = np.argmax(x @ w + b, axis=1)
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))

    def dataset(self, n_train: int, n_test: int) -> Dataset:
        """An in-memory train/test pair (rows from keys distinct from any client's)."""
        x, y = self.sample(n_train, [self.seed, 0xDA7A, 0])
        xt, yt = self.sample(n_test, [self.seed, 0xDA7A, 1])
        return Dataset(f"gaussian-teacher({self.dim},{self.num_classes})", x, y, xt, yt, self.num_classes)
