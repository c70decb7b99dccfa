"""Load a dataset by name: the embedded digits, generated synthetic data, or files the user points at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..memory import return_freed_memory
from .examples import Dataset
from .tabular import holdout

DATASETS = ("digits", "mnist", "fashion-mnist", "kmnist", "emnist", "cifar10", "cifar100", "femnist",
            "shakespeare", "sent140", "synthetic", "npz", "csv")
BUILT_IN = ("digits", "synthetic")
DEFAULT_PATHS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside the package)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)
    y = bunch.target.astype(np.int64)
    tr, te = holdout(len(y), test_fraction, seed)
    return Dataset("digits", torch.from_numpy(x[tr]), torch.from_numpy(y[tr]),
                   torch.from_numpy(x[te]), torch.from_numpy(y[te]), num_classes=10)


def data_source(name: str, path: str | Path | None) -> Path | None:
    """Where dataset `name` is read from (None: built in); a DataError, before anything is read, when the
    combination cannot work."""
    if name not in DATASETS:
        raise DataError(f"data.name = {name!r} is unknown; allowed: {', '.join(DATASETS)}")
    if name in BUILT_IN and path is not None:
        readers = ", ".join(n for n in DATASETS if n not in BUILT_IN)
        raise DataError(f"{path}: dataset {name!r} is built in and reads no file; set data.name to the reader of "
                        f"this file ({readers}) or use your own reader (fedloop.App)")
    if name in BUILT_IN:
        return None
    where = Path(path) if path is not None else DEFAULT_PATHS.get(name)
    if where is None:
        raise DataError(f"data.path is required for dataset {name!r} (no default location is known)")
    if path is None and not where.is_dir():
        raise DataError(f"{where}: {name} not found; install Debian's dataset-fashion-mnist package "
                        "or set data.path")
    if not where.exists():
        raise DataError(f"{where}: does not exist (data.path)")
    return where


def load_dataset(name: str, path: str | Path | None = None, *, seed: int = 0, test_fraction: float = 0.2,
                 split: str = "balanced", label_column: str = "label", test_path: str | Path | None = None,
                 alpha: float = 1.0, beta: float = 1.0, num_users: int = 30) -> Dataset:
    """Read or generate dataset `name`; DataError names the file and what is wrong with it."""
    try:
        where = data_source(name, path)
        if name == "digits":
            return load_digits(test_fraction, seed)
        if name == "synthetic":
            return make_synthetic_dataset(alpha, beta, num_users, seed)
        assert where is not None
        if name in ("mnist", "fashion-mnist", "kmnist", "emnist"):
            from .idx import load_idx_dataset

            return load_idx_dataset(name, where, split)
        if name in ("cifar10", "cifar100"):
            from .cifar import load_cifar

            return load_cifar(name, where)
        if name in ("femnist", "shakespeare", "sent140"):
            from .leaf import load_leaf

            return load_leaf(name, where)
        if name == "npz":
            from .tabular import load_npz

            return load_npz(where, test_fraction, seed)
        from .tabular import load_csv

        return load_csv(where, label_column, Path(test_path) if test_path else None, test_fraction, seed)
    finally:
        return_freed_memory()  # the decoding buffers, which glibc would keep (memory.py)


def make_synthetic_dataset(alpha: float, beta: float, num_users: int, seed: int) -> Dataset:
    from .synthetic import make_synthetic

    if num_users < 1:
        raise DataError(f"data.num_users = {num_users} must be at least 1")
    return make_synthetic(alpha, beta, num_users, seed)
