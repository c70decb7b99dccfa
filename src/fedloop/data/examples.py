"""Examples: a client's rows of shared arrays, and Dataset: a named train/test pair of arrays."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError


@dataclass(frozen=True)
class Examples:
    """Rows `index` of the shared arrays x and y. Nothing is copied until a batch is drawn."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    @staticmethod
    def all(x: torch.Tensor, y: torch.Tensor) -> Examples:
        return Examples(x, y, torch.arange(len(y)))

    def __len__(self) -> int:
        return int(self.index.numel())

    def labels(self) -> torch.Tensor:
        return self.y[self.index.to(self.y.device)]

    def batches(self, batch_size: int | None, generator: torch.Generator | None) -> Iterator[
            tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of minibatches; shuffled with `generator` when given, the last batch may be short."""
        n = len(self)
        order = self.index if generator is None else self.index[torch.randperm(n, generator=generator)]
        size = n if batch_size is None else batch_size
        for start in range(0, n, size):
            rows = order[start:start + size]
            yield self.x[rows.to(self.x.device)], self.y[rows.to(self.y.device)]


@dataclass(frozen=True)
class Dataset:
    """A dataset as fedloop sees it: train and test arrays plus what models need to know about them.

    `train_users` / `test_users` give each row's natural owner (writer, speaker, device) where the
    source has one; the "natural" partition uses them.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    train_users: np.ndarray | None = None
    test_users: np.ndarray | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if len(x) != len(y):
                raise DataError(f"dataset {self.name!r}: {split} has {len(x)} inputs but {len(y)} labels")
        if len(self.y_train) == 0:
            raise DataError(f"dataset {self.name!r}: the training set is empty")
        if self.train_users is not None and len(self.train_users) != len(self.y_train):
            raise DataError(f"dataset {self.name!r}: {len(self.train_users)} user ids for "
                            f"{len(self.y_train)} training rows")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def spec(self) -> dict:
        """What a model factory needs to rebuild a model for this data without reading it."""
        return {"input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "vocab_size": self.vocab_size}
