"""Tabular data: NumPy .npz archives and CSV files with a label column."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .examples import Dataset


def holdout(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test row indices for sources that ship no test split."""
    order = np.random.default_rng([seed, 0x7E57]).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be one-dimensional, found shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{where}: labels must be integer class ids")
        y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: labels must be non-negative class ids, found {int(y.min())}")
    return y.astype(np.int64)


def _make(name: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray,
          users: np.ndarray | None = None) -> Dataset:
    classes = int(max(y.max(), yt.max() if len(yt) else 0)) + 1
    return Dataset(name, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y),
                   torch.from_numpy(np.ascontiguousarray(xt, dtype=np.float32)), torch.from_numpy(yt),
                   classes, train_users=users)


def load_npz(path: Path, test_fraction: float, seed: int) -> Dataset:
    """Keys x_train, y_train, x_test, y_test; or x, y (a test split is held out); optional users_train."""
    what = "arrays x_train, y_train, x_test, y_test (or x, y), as numpy.savez writes them"
    try:
        if not Path(path).is_file():
            raise FileNotFoundError(path)
        if not zipfile.is_zipfile(path):  # np.load would read a .npy array, or refuse a pickle, instead
            raise DataError(f"{path}: not an .npz archive; fedloop's npz reader takes the {what}")
        arch = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc}); fedloop's npz reader takes the {what}") \
            from None
    keys = set(arch.files)
    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
        x, y, xt, yt = arch["x_train"], arch["y_train"], arch["x_test"], arch["y_test"]
        users = arch["users_train"] if "users_train" in keys else None
    elif {"x", "y"} <= keys:
        tr, te = holdout(len(arch["y"]), test_fraction, seed)
        x, y, xt, yt = arch["x"][tr], arch["y"][tr], arch["x"][te], arch["y"][te]
        users = arch["users"][tr] if "users" in keys else None
    else:
        raise DataError(f"{path}: needs the arrays x_train, y_train, x_test, y_test (or x, y); "
                        f"found {sorted(keys)}")
    for xs, ys, split in ((x, y, "train"), (xt, yt, "test")):
        if len(xs) != len(ys):
            raise DataError(f"{path}: {split} has {len(xs)} inputs but {len(ys)} labels")
    return _make("npz", x, _labels(y, f"{path} (train labels)"), xt, _labels(yt, f"{path} (test labels)"),
                 None if users is None else np.asarray(users).astype(np.int64))


def _read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: a CSV needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise DataError(f"{path}: label column {label_column!r} not in header {header}")
    li = header.index(label_column)
    feats, labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        try:
            values = [float(v) for v in row]
        except ValueError:
            raise DataError(f"{path}:{line}: every field must be a number") from None
        labels.append(values.pop(li))
        feats.append(values)
    return np.asarray(feats, dtype=np.float32), _labels(np.asarray(labels), str(path))


def load_csv(path: Path, label_column: str, test_path: Path | None, test_fraction: float,
             seed: int) -> Dataset:
    """Numeric CSV with a header; `label_column` holds integer class ids, every other column is a feature."""
    x, y = _read_csv(path, label_column)
    if test_path is not None:
        xt, yt = _read_csv(test_path, label_column)
        if xt.shape[1] != x.shape[1]:
            raise DataError(f"{test_path}: {xt.shape[1]} features, {path} has {x.shape[1]}")
    else:
        tr, te = holdout(len(y), test_fraction, seed)
        x, y, xt, yt = x[tr], y[tr], x[te], y[te]
    return _make("csv", x, y, xt, yt)
