"""Uploaded updates spooled to disk as they stream in, and read back one tensor at a time.

The server then holds at most one chunk per upload in flight and one tensor per update while it checks and
aggregates (the aggregator streams over updates in client-id order), so its memory does not grow with the
number of clients and the result does not depend on arrival order.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import TransportError
from ..types import Params
from .codec import EXTRAS


class Lease:
    """Keeps an accepted upload's file while anything refers to it: the file is discarded from its spool when the
    last view of it (the update's params and extras) is gone, however long the loop keeps the update (an
    asynchronous server may hold it across several collects)."""

    def __init__(self, spool: Spool, path: Path):
        weakref.finalize(self, spool.discard, path)


class SpooledParams(Mapping[str, torch.Tensor]):
    """A safetensors file on disk as a read-only name -> tensor mapping; each lookup reads that tensor
    (stored under `prefix` + name). `lease`, when set, keeps the file while this mapping lives.

    What the upload's check learned rides along, so that nothing reads the file again to learn it: `shapes` (each
    tensor's shape, params.shape_of) and `peaks` (each floating tensor's largest |value|, for the aggregate's
    overflow bound, culprits.overflows)."""

    def __init__(self, path: Path, names: list[str], prefix: str = "", shapes: dict[str, torch.Size] | None = None,
                 peaks: dict[str, float] | None = None):
        self.path = path
        self._names = names
        self.prefix = prefix
        self.shapes = shapes
        self.peaks = peaks
        self.lease: Lease | None = None

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(self.prefix + name)

    def __contains__(self, name: object) -> bool:  # Mapping's would read the tensor
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def flat_slice(self, name: str, cols: slice) -> torch.Tensor:
        """Values cols of tensor `name` flattened, reading only the rows of its first dimension that hold them
        (robust aggregators read n spooled updates this way, a column chunk at a time)."""
        if name not in self._names:
            raise KeyError(name)
        with safe_open(self.path, framework="pt") as f:
            part = f.get_slice(self.prefix + name)
            shape = part.get_shape()
            if len(shape) < 2:
                return part[:].reshape(-1)[cols]
            row = math.prod(shape[1:])
            first, last = cols.start // row, -(-cols.stop // row)
            rows = part[first:last].reshape(-1)
            return rows[cols.start - first * row:cols.stop - first * row]


def check_spooled(path: Path, reference: Params, extras: Params, max_norm: float | None = None
                  ) -> tuple[tuple[SpooledParams, SpooledParams] | None, str | None]:
    """Open an uploaded file and check it, one tensor at a time, against the global params and the task's
    extras (an update's extras answer its task's: same names, shapes and dtypes), and the update's L2 norm against
    `max_norm`. (params, extras), or why not."""
    expected = {**reference, **{EXTRAS + k: v for k, v in extras.items()}}
    squares = 0.0
    shapes: dict[str, torch.Size] = {}
    peaks: dict[str, float] = {}
    try:
        with safe_open(path, framework="pt") as f:
            names = set(f.keys())
            if names != set(expected):
                missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
                return None, clean(f"tensor names differ from the task's: missing {missing}, unexpected {extra}")
            for name, ref in expected.items():
                t = f.get_tensor(name)
                if t.shape != ref.shape:
                    return None, f"tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
                if t.dtype != ref.dtype:
                    return None, f"tensor {name!r} has dtype {t.dtype}, expected {ref.dtype}"
                shapes[name] = t.shape
                if t.is_floating_point() and t.numel():
                    low, high = (float(v) for v in torch.aminmax(t))  # NaN if any is NaN: one pass, no copy
                    if not (math.isfinite(low) and math.isfinite(high)):
                        return None, f"tensor {name!r} holds NaN or infinite values"
                    peaks[name] = max(-low, high)
                if max_norm is not None and name in reference and t.is_floating_point():
                    squares += float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
    except Exception as exc:  # noqa: BLE001 - any unreadable upload is a rejection, never a crash
        return None, clean(f"not valid safetensors bytes ({exc})")
    if max_norm is not None and not math.sqrt(squares) <= max_norm:
        return None, f"update norm {math.sqrt(squares):.6g} exceeds server.max_update_norm = {max_norm:g}"
    return (SpooledParams(path, list(reference), shapes=shapes, peaks=peaks),
            SpooledParams(path, list(extras), EXTRAS, {k: shapes[EXTRAS + k] for k in extras},
                          {k: peaks[EXTRAS + k] for k in extras if EXTRAS + k in peaks})), None


SPOOL_MARGIN = 1 << 30
"""Bytes of free disk space the spool leaves when its budget follows the open tasks (server.spool_bytes unset)."""


class Spool:
    """The server's uploads on disk, within a byte budget. Space is reserved from an upload's declared size before
    any byte is written and returned when its file is deleted: at once for a rejected upload, when the last view of
    an accepted one is gone (its update has been reduced), and the whole directory when the server stops and when a
    server starts on it (what a killed server left).

    The budget is `capacity` bytes, or with capacity None what the fleet sets as the open tasks' need (`need`),
    as long as the disk keeps SPOOL_MARGIN bytes free: a round of 1,000 clients of a 4 MB model needs 4 GB of
    spool, and hostile clients still cannot take more than one upload per open task."""

    def __init__(self, directory: str | Path, capacity: int | None):
        self.dir = Path(directory)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.fixed = capacity
        self.need = 0
        self.used = 0
        self._sizes: dict[Path, int] = {}
        self._n = 0
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.fixed if self.fixed is not None else self.need

    def reserve(self, size: int) -> Path | None:
        """A new file's path with `size` bytes reserved for it, or None when the budget (or the disk) cannot hold
        them."""
        with self._lock:
            if self.used + size > self.capacity:
                return None
            if self.fixed is None and shutil.disk_usage(self.dir).free - size < SPOOL_MARGIN:
                return None
            self._n += 1
            path = self.dir / f"upload_{self._n}.safetensors"
            self._sizes[path] = size
            self.used += size
            return path

    def discard(self, path: Path | None) -> None:
        """Delete an upload and return its space."""
        if path is None:
            return
        with self._lock:
            self.used -= self._sizes.pop(path, 0)
        path.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


SLACK = 0.25
"""Seconds a stream's idle deadline may lag behind its last chunk: a stream is cut after a pause of between
idle - SLACK and idle seconds."""


def extend(deadline: asyncio.Timeout, idle: float) -> None:
    """Move a stream's idle deadline to `idle` seconds from now once it lags by more than SLACK: a few timer
    reschedules a second instead of one per chunk (each is a cancelled and a new timer on the event loop)."""
    when = asyncio.get_running_loop().time() + idle
    current = deadline.when()
    if current is None or when - current > SLACK:
        deadline.reschedule(when)


async def write_stream(path: Path, parts: AsyncIterator[bytes], size: int, idle: float, min_rate: float) -> None:
    """Write exactly `size` bytes to `path` as they arrive. TransportError when the client sends more or fewer,
    sends nothing for `idle` seconds, or averages less than `min_rate` bytes/s once `idle` seconds have passed."""
    start = time.monotonic()
    got = 0
    try:
        async with asyncio.timeout(idle) as deadline:
            with open(path, "wb") as out:
                async for part in parts:
                    extend(deadline, idle)
                    got += len(part)
                    if got > size:
                        raise TransportError(f"upload exceeds its declared {size} bytes")
                    out.write(part)
                    elapsed = time.monotonic() - start
                    if elapsed > idle and got / elapsed < min_rate:
                        raise TransportError(f"upload too slow: {got / elapsed:.0f} bytes/s, below {min_rate:g}")
    except TimeoutError:
        raise TransportError(f"upload stalled: nothing for {idle:g} s after {got} bytes") from None
    if got != size:
        raise TransportError(f"upload ended after {got} of its declared {size} bytes")


def clean(text: str, limit: int = 300) -> str:
    """A client-supplied string made safe for logs and files: control characters (newlines included) escaped,
    cut to `limit` characters."""
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))
    return out if len(out) <= limit else out[:limit] + "..."
