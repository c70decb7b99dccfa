"""Your own model, loss and data format under fedloop's CLI, server and clients: this file's `app`.

    python examples/custom_app.py split DIR N     # digits as JSON lines: DIR/all.jsonl, client0..N-1, server
    fedloop run --app examples/custom_app.py:app --set data.path=DIR/all.jsonl
    fedloop server --app examples/custom_app.py:app --set data.path=DIR/server.jsonl ...
    fedloop client --app examples/custom_app.py:app --data DIR/client0.jsonl ...

A data file holds one example per line: {"x": [64 pixel values in 0..1], "y": label, "split": "train" or "test"}.
fedloop reads no such format itself: `read_jsonl` below does, and the App hands it to fedloop.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import fedloop

FEATURES, CLASSES = 64, 10


class ScaledMLP(nn.Module):
    """An MLP with a learned scale per input feature and a LayerNorm: params no zoo model has."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(FEATURES))
        self.hidden = nn.Linear(FEATURES, 64)
        self.norm = nn.LayerNorm(64)
        self.out = nn.Linear(64, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.norm(self.hidden(x * self.scale))))


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with label smoothing: the loss every client trains with and the server evaluates."""
    return F.cross_entropy(logits, y, label_smoothing=0.1)


def read_jsonl(path: str) -> fedloop.Dataset:
    """The examples of one JSON-lines file; a DataError names the file, the line and what is wrong."""
    rows: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                x, y, split = row["x"], int(row["y"]), row["split"]
            except (ValueError, KeyError, TypeError) as exc:
                raise fedloop.DataError(f"{path}, line {n}: expected {{'x': [...], 'y': int, 'split': ...}} "
                                        f"({type(exc).__name__}: {exc})") from None
            if split not in rows or len(x) != FEATURES or not 0 <= y < CLASSES:
                raise fedloop.DataError(f"{path}, line {n}: need split train/test, {FEATURES} features and a "
                                        f"label 0..{CLASSES - 1}")
            rows[split][0].append(x)
            rows[split][1].append(y)

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = rows[split]
        return (torch.tensor(xs, dtype=torch.float32).reshape(-1, FEATURES),
                torch.tensor(ys, dtype=torch.int64))

    (x_train, y_train), (x_test, y_test) = tensors("train"), tensors("test")
    return fedloop.Dataset("digits-jsonl", x_train, y_train, x_test, y_test, CLASSES)


app = fedloop.App(model_fn=ScaledMLP, loss_fn=smoothed_cross_entropy, load_data=read_jsonl)


def write_jsonl(path: Path, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for split, (x, y) in splits.items():
            for xi, yi in zip(x.flatten(1).tolist(), y.tolist(), strict=True):
                f.write(json.dumps({"x": xi, "y": yi, "split": split}) + "\n")


def split(out: Path, n: int) -> None:
    """Digits as JSON lines: all.jsonl (for `fedloop run`), n clients' files and the server's held-out test set."""
    out.mkdir(parents=True, exist_ok=True)
    data = fedloop.load_dataset("digits")
    write_jsonl(out / "all.jsonl", {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)})
    part = fedloop.make_partition(data, "dirichlet", n, seed=0, alpha=1.0, local_test_fraction=0.2)
    for c in range(n):
        train, test = part.train[c], part.test[c]
        write_jsonl(out / f"client{c}.jsonl", {"train": (data.x_train[train], data.y_train[train]),
                                               "test": (data.x_train[test], data.y_train[test])})
    write_jsonl(out / "server.jsonl", {"train": (data.x_train[:1], data.y_train[:1]),
                                       "test": (data.x_test, data.y_test)})
    print(f"wrote all.jsonl, {n} client files and server.jsonl to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "split":
        sys.exit(__doc__)
    split(Path(sys.argv[2]), int(sys.argv[3]))
