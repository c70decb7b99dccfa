"""What every aggregator shares: the protocol (a stateful init/apply pair from a round's updates, sorted by client
id, to the reduced update's tensors), the example-weighted mean of client metrics, and the helpers robust
aggregators read updates with one tensor at a time, so that spooled updates never sit in memory whole."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Literal, Protocol

import torch

from ..errors import AggregationError, ConfigError
from ..params import check_compatible
from ..types import Params, Update

Weighting = Literal["samples", "uniform"]
AggState = Mapping[str, torch.Tensor]


class Aggregator(Protocol):
    name: ClassVar[str]

    def init(self, params: Params) -> dict[str, torch.Tensor]: ...

    def apply(self, updates: Sequence[Update], state: AggState
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]: ...


def names_of(updates: Sequence[Update]) -> list[str]:
    """The tensor names of a round's updates, checked to agree in names and shapes."""
    if not updates:
        raise AggregationError("cannot aggregate zero updates")
    first = updates[0].params
    for u in updates[1:]:
        check_compatible(first, u.params, what=f"update of client {u.client_id}")
    return list(first)


CHUNK_VALUES = 1 << 24
"""float64 values one stacked chunk of updates may hold (128 MiB): n updates are read in column chunks of
CHUNK_VALUES // n values, so the memory of a robust aggregation grows with n x one chunk, not n x the model."""


def column_chunks(updates: Sequence[Update], name: str) -> Iterator[tuple[slice, torch.Tensor]]:
    """Tensor `name` of every update, flattened, as [n, width] float64 column chunks in client-id order."""
    numel = updates[0].params[name].numel()
    width = max(1, CHUNK_VALUES // max(len(updates), 1))
    for start in range(0, numel, width):
        cols = slice(start, min(numel, start + width))
        yield cols, torch.stack([flat_slice(u.params, name, cols).to(torch.float64) for u in updates])


SORT_VALUES = 1 << 22
"""Values one chunk of sorted columns holds (16 MiB of float32; one chunk per sorting thread): n updates are
sorted in chunks of at most SORT_VALUES // n coordinates (measured: 2^20 and 2^21 were slower at n = 1,000)."""


PARALLEL_SORT = 1 << 20
"""Values (coordinates x updates) from which several threads sort (below, starting them costs more than it
saves)."""


def sorted_columns(updates: Sequence[Update], name: str) -> Iterator[tuple[slice, torch.Tensor]]:
    """Tensor `name` of every update, flattened, as [width, n] chunks in which each row (one coordinate across the
    n updates) is sorted ascending, NaN last. Values keep their dtype when it is float32 or float64 (sorting and
    selection are exact in it) and are float64 otherwise. NumPy sorts: its sort of short rows is vectorized
    (AVX-512 or AVX2 where the CPU has them) and several times faster than torch.sort's. Both the stacking and the
    sort release the GIL, so torch's intra-op thread count of threads each build and sort their own chunks."""
    ref = updates[0].params[name]
    dtype = ref.dtype if ref.dtype in (torch.float32, torch.float64) else torch.float64
    numel, n = ref.numel(), len(updates)
    threads = min(torch.get_num_threads(), numel * n // PARALLEL_SORT + 1)
    width = max(1, min(SORT_VALUES // max(n, 1), -(-numel // threads)))
    chunks = [slice(start, min(numel, start + width)) for start in range(0, numel, width)]

    def sort(cols: slice) -> tuple[slice, torch.Tensor]:
        rows = torch.stack([flat_slice(u.params, name, cols).to(dtype) for u in updates], dim=1)
        if rows.device.type != "cpu":  # updates on an accelerator: its own sort (NaN last, as NumPy's)
            return cols, rows.sort(dim=1).values
        rows.numpy().sort(axis=1)
        return cols, rows

    if threads <= 1:
        yield from map(sort, chunks)
        return
    with ThreadPoolExecutor(threads) as pool:
        for at in range(0, len(chunks), threads):  # at most `threads` chunks in memory at once
            yield from pool.map(sort, chunks[at:at + threads])


def flat_slice(params: Params, name: str, cols: slice) -> torch.Tensor:
    """Values cols of tensor `name` flattened; a spooled update reads only the rows that hold them."""
    read = getattr(params, "flat_slice", None)
    return read(name, cols) if read is not None else params[name].reshape(-1)[cols]


Chunks = Callable[[Sequence[Update], str], Iterator[tuple[slice, torch.Tensor]]]


def per_column(updates: Sequence[Update], name: str, fn: Callable[[torch.Tensor, slice], torch.Tensor],
               chunks: Chunks = column_chunks) -> torch.Tensor:
    """fn(rows, cols) -> one value per coordinate, over every chunk of tensor `name` (column_chunks' [n, width], or
    sorted_columns' [width, n]): a flat float64 result."""
    ref = updates[0].params[name]
    out = torch.empty(ref.numel(), dtype=torch.float64, device=ref.device)
    for cols, rows in chunks(updates, name):
        out[cols] = fn(rows, cols)
    return out


def per_update(updates: Sequence[Update], names: Sequence[str],
               fn: Callable[[torch.Tensor, str, slice], torch.Tensor]) -> torch.Tensor:
    """The sum over every chunk of every tensor of fn(rows, name, cols) -> one value per update (e.g. squared
    norms)."""
    total = torch.zeros(len(updates), dtype=torch.float64, device=updates[0].params[names[0]].device)
    for k in names:
        for cols, rows in column_chunks(updates, k):
            total += fn(rows, k, cols)
    return total


def shaped(updates: Sequence[Update], name: str, row: torch.Tensor) -> torch.Tensor:
    """A flat float64 result back in the shape and dtype of the updates' tensor `name`."""
    ref = updates[0].params[name]
    return row.reshape(ref.shape).to(ref.dtype)


def requirements(aggregator: object) -> list[tuple[int, str]]:
    """(minimum updates, the assumption that needs them) of an aggregator (`requires()`; none when it has none)."""
    requires = getattr(aggregator, "requires", None)
    return list(requires()) if requires is not None else []


def check_round_size(aggregator: object, n: int, what: str = "this round has") -> None:
    """Refuse n updates when one of the aggregator's assumptions needs more: at every round, and before a run starts
    for the round size its sampler gives."""
    for minimum, rule in requirements(aggregator):
        if n < minimum:
            raise ConfigError(f"aggregator {getattr(aggregator, 'name', aggregator)!r} {rule}, so it needs at least "
                              f"{minimum} updates; {what} {n}")


def mean_metrics(updates: Sequence[Update]) -> dict[str, float]:
    """Example-weighted mean of each client metric (clients that lack a metric are skipped for it). Metrics whose
    name starts with "_" are for the server's transforms only (e.g. DP's clipped bit) and are never released."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for u in updates:
        for k, v in u.metrics.items():
            if k.startswith("_"):
                continue
            sums[k] = sums.get(k, 0.0) + float(v) * u.num_examples
            counts[k] = counts.get(k, 0) + u.num_examples
    return {k: sums[k] / counts[k] for k in sums if counts[k] > 0}
