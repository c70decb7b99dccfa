"""Uploaded updates spooled to disk as they stream in, and read back one tensor at a time.

The server then holds at most one chunk per upload in flight and one tensor per update while it checks and
aggregates (the aggregator streams over updates in client-id order), so its memory does not grow with the
number of clients and the result does not depend on arrival order.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import TransportError
from ..types import Params
from .codec import EXTRAS


class SpooledParams(Mapping[str, torch.Tensor]):
    """A safetensors file on disk as a read-only name -> tensor mapping; each lookup reads that tensor
    (stored under `prefix` + name)."""

    def __init__(self, path: Path, names: list[str], prefix: str = ""):
        self.path = path
        self._names = names
        self.prefix = prefix

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(self.prefix + name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def check_spooled(path: Path, reference: Params, extras: Params
                  ) -> tuple[tuple[SpooledParams, SpooledParams] | None, str | None]:
    """Open an uploaded file and check it, one tensor at a time, against the global params and the task's
    extras (an update's extras answer its task's: same names, shapes and dtypes). (params, extras), or why not."""
    expected = {**reference, **{EXTRAS + k: v for k, v in extras.items()}}
    try:
        with safe_open(path, framework="pt") as f:
            names = set(f.keys())
            if names != set(expected):
                missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
                return None, f"tensor names differ from the task's: missing {missing}, unexpected {extra}"
            for name, ref in expected.items():
                t = f.get_tensor(name)
                if t.shape != ref.shape:
                    return None, f"tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
                if t.dtype != ref.dtype:
                    return None, f"tensor {name!r} has dtype {t.dtype}, expected {ref.dtype}"
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return None, f"tensor {name!r} holds NaN or infinite values"
    except Exception as exc:  # noqa: BLE001 - any unreadable upload is a rejection, never a crash
        return None, f"not valid safetensors bytes ({exc})"
    return (SpooledParams(path, list(reference)), SpooledParams(path, list(extras), EXTRAS)), None


class Spool:
    """A directory of uploads: a rejected one is deleted at once, an accepted one when the next round's tasks
    open (its round has been reduced by then), and the whole directory when the server stops."""

    def __init__(self, root: str | Path | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="fedloop-spool-", dir=root))
        self._n = 0

    def new_file(self) -> Path:
        self._n += 1
        return self.dir / f"upload_{self._n}.safetensors"

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


async def write_stream(path: Path, parts: AsyncIterator[bytes], limit: int) -> int:
    """Write chunks to `path` as they arrive; TransportError past `limit` bytes."""
    size = 0
    with open(path, "wb") as out:
        async for part in parts:
            size += len(part)
            if size > limit:
                raise TransportError(f"upload exceeds {limit} bytes")
            out.write(part)
    return size
