"""CIFAR-10 / CIFAR-100 in the "python version" (pickled batches)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .examples import Dataset


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path}: CIFAR batch file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CIFAR python batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if "data" not in d or label_key not in d:
        raise DataError(f"{path}: CIFAR batch lacks the keys 'data' and {label_key!r}")
    x = np.asarray(d["data"], dtype=np.uint8)
    y = np.asarray(d[label_key], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3072:
        raise DataError(f"{path}: 'data' should have shape (N, 3072), found {x.shape}")
    if len(x) != len(y):
        raise DataError(f"{path}: {len(y)} labels for {len(x)} images")
    return x.reshape(-1, 3, 32, 32), y


def load_cifar(name: str, directory: Path) -> Dataset:
    """`directory` is the extracted cifar-10-batches-py or cifar-100-python folder (or its parent)."""
    if name == "cifar10":
        sub, train_files, test_files, label_key, classes = (
            "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10)
    else:
        sub, train_files, test_files, label_key, classes = (
            "cifar-100-python", ["train"], ["test"], "fine_labels", 100)
    if (directory / sub).is_dir():
        directory = directory / sub
    if not directory.is_dir():
        raise DataError(f"{directory}: data directory for {name!r} does not exist")

    def load(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_batch(directory / f, label_key) for f in files]
        x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
        return torch.from_numpy(x), torch.from_numpy(np.concatenate([p[1] for p in parts]))

    xtr, ytr = load(train_files)
    xte, yte = load(test_files)
    return Dataset(name, xtr, ytr, xte, yte, num_classes=classes)
