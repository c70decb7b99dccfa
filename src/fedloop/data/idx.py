"""IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), raw or gzip-compressed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .examples import Dataset

_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file, validating its magic number and that its size matches its header."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read IDX file: {exc.strerror or exc}") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path}: wrong magic number {raw[:4].hex() or '(empty file)'}; "
                        "an IDX file starts with 00 00 <type> <ndim>")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header (ndim {ndim}, {len(raw)} bytes)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise DataError(f"{path}: truncated or oversized IDX file: header {dims} needs {expected} bytes of "
                        f"data, found {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find(directory: Path, stems: list[str]) -> Path:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                return directory / name
    raise DataError(f"{directory}: none of {', '.join(s + '[.gz]' for s in stems)} found")


def load_idx_dataset(name: str, directory: Path, split: str = "balanced") -> Dataset:
    """The four IDX files of an MNIST-like dataset; EMNIST files are named emnist-<split>-*."""
    if not directory.is_dir():
        raise DataError(f"{directory}: data directory for {name!r} does not exist")
    if name == "emnist":
        pre = f"emnist-{split}-"
        files = {key: _find(directory, [f"{pre}{part}"]) for key, part in (
            ("xtr", "train-images-idx3-ubyte"), ("ytr", "train-labels-idx1-ubyte"),
            ("xte", "test-images-idx3-ubyte"), ("yte", "test-labels-idx1-ubyte"))}
    else:
        files = {"xtr": _find(directory, ["train-images-idx3-ubyte", "train-images.idx3-ubyte"]),
                 "ytr": _find(directory, ["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"]),
                 "xte": _find(directory, ["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"]),
                 "yte": _find(directory, ["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"])}
    arrays = {key: read_idx(path) for key, path in files.items()}
    for xs, ys in (("xtr", "ytr"), ("xte", "yte")):
        x, y = arrays[xs], arrays[ys]
        if x.ndim != 3:
            raise DataError(f"{files[xs]}: expected images of shape (N, H, W), found {x.shape}")
        if y.ndim != 1:
            raise DataError(f"{files[ys]}: expected labels of shape (N,), found {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{files[ys]}: {len(y)} labels for {len(x)} images in {files[xs].name}")
    xtr, xte = arrays["xtr"], arrays["xte"]
    if name == "emnist":  # EMNIST images are stored transposed
        xtr, xte = xtr.transpose(0, 2, 1), xte.transpose(0, 2, 1)
    ytr, yte = arrays["ytr"].astype(np.int64), arrays["yte"].astype(np.int64)
    num_classes = int(max(ytr.max(), yte.max() if len(yte) else 0)) + 1
    return Dataset(
        name=name,
        x_train=torch.from_numpy(_unit_floats(xtr)),
        y_train=torch.from_numpy(ytr),
        x_test=torch.from_numpy(_unit_floats(xte)),
        y_test=torch.from_numpy(yte),
        num_classes=num_classes)


def _unit_floats(pixels: np.ndarray) -> np.ndarray:
    """Bytes 0..255 as float32 in [0, 1], scaled in place (one float copy of the images, not two)."""
    out = np.array(pixels, dtype=np.float32)
    out /= 255.0
    return out
