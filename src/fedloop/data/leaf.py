"""LEAF benchmark JSON (FEMNIST, Shakespeare, Sent140): each writer, speaker or tweeter is a client.

A LEAF directory holds train/*.json and test/*.json, each file {"users": [...], "num_samples": [...],
"user_data": {user: {"x": [...], "y": [...]}}}, as written by LEAF's preprocessing scripts.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .examples import Dataset

VOCAB = string.printable
"""Characters with their own id (1..len); id 0 is padding and any other character."""
VOCAB_SIZE = len(VOCAB) + 1
_CHAR_ID = {c: i + 1 for i, c in enumerate(VOCAB)}
SEQ_LEN = 80


def encode_text(text: str, length: int = SEQ_LEN) -> list[int]:
    """Character ids of the last `length` characters, left-padded with 0."""
    ids = [_CHAR_ID.get(c, 0) for c in text[-length:]]
    return [0] * (length - len(ids)) + ids


def _read_split(directory: Path, path_for_errors: Path) -> dict[str, dict]:
    files = sorted(directory.glob("*.json"))
    if not files:
        raise DataError(f"{path_for_errors}: no LEAF .json files in {directory}")
    users: dict[str, dict] = {}
    for f in files:
        try:
            blob = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{f}: not valid JSON ({exc})") from None
        if not isinstance(blob, dict) or "user_data" not in blob:
            raise DataError(f"{f}: a LEAF file needs the key 'user_data'")
        for user, d in blob["user_data"].items():
            if not isinstance(d, dict) or "x" not in d or "y" not in d:
                raise DataError(f"{f}: user {user!r} lacks 'x' or 'y'")
            if len(d["x"]) != len(d["y"]):
                raise DataError(f"{f}: user {user!r} has {len(d['x'])} inputs but {len(d['y'])} labels")
            entry = users.setdefault(user, {"x": [], "y": []})
            entry["x"].extend(d["x"])
            entry["y"].extend(d["y"])
    return users


def _tweet_text(x: object) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and len(x) >= 5 and isinstance(x[4], str):
        return x[4]  # LEAF's sent140 rows: [id, date, query, user, text, ...]
    raise DataError(f"sent140 row {str(x)[:60]!r} is neither a text nor a LEAF row with the text at index 4")


def _convert(name: str, users: dict[str, dict], user_ids: dict[str, int], f: Path
             ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    xs, ys, owners = [], [], []
    for user, d in users.items():
        uid = user_ids.setdefault(user, len(user_ids))
        xs.extend(d["x"])
        ys.extend(d["y"])
        owners.extend([uid] * len(d["y"]))
    try:
        if name == "femnist":
            x = torch.tensor(np.asarray(xs, dtype=np.float32).reshape(-1, 28, 28))
            y = torch.tensor(np.asarray(ys, dtype=np.int64))
        elif name == "shakespeare":
            x = torch.tensor([encode_text(s) for s in xs], dtype=torch.long)
            y = torch.tensor([_CHAR_ID.get(c, 0) for c in ys], dtype=torch.long)
        else:
            x = torch.tensor([encode_text(_tweet_text(s)) for s in xs], dtype=torch.long)
            y = torch.tensor(np.asarray(ys, dtype=np.float64).astype(np.int64))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{f}: {name} rows have an unexpected form ({exc})") from None
    return x, y, np.asarray(owners, dtype=np.int64)


def load_leaf(name: str, directory: Path) -> Dataset:
    """Read LEAF train/ and test/ splits; rows keep their user as the natural client."""
    for sub in ("train", "test"):
        if not (directory / sub).is_dir():
            raise DataError(f"{directory}: a LEAF directory needs the folders train/ and test/ ({sub}/ missing)")
    user_ids: dict[str, int] = {}
    xtr, ytr, utr = _convert(name, _read_split(directory / "train", directory), user_ids, directory / "train")
    xte, yte, ute = _convert(name, _read_split(directory / "test", directory), user_ids, directory / "test")
    if name == "femnist":
        classes, vocab = 62, None
    elif name == "shakespeare":
        classes, vocab = VOCAB_SIZE, VOCAB_SIZE
    else:
        classes, vocab = 2, VOCAB_SIZE
    return Dataset(name, xtr, ytr, xte, yte, classes, train_users=utr, test_users=ute, vocab_size=vocab)
