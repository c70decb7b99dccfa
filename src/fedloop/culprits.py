"""The updates a round is applied without when they alone would break it: one credentialed client must not end a
run by uploading finite but huge values (a mean hides them until the global params overflow).

A round is suspect when its new global params are not finite, or when the example-weighted sum of its updates
(sum of n_i * update_i) leaves the range of the params' dtype. Its updates are then dropped, the non-finite ones
first, then the finite ones by their weighted norm n * |update|, largest first, until the rest gives a sound round.
A dropped non-finite update is refused for this round only (a fault, as the deployment's spool refuses one). A
dropped finite update is refused and its client excluded from the run's later rounds, but only when its weighted
norm is at least OUTLIER times the median of the updates kept: updates of one scale that overflow together are
honest training diverging, and then no client is blamed and the round fails as before.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from .types import Failure, Params, Update, in_memory, shape_of

OUTLIER = 1000.0
"""How many times the median weighted norm of the kept updates a finite update must reach to be blamed."""

T = TypeVar("T")


def weighted_norm(update: Update) -> float:
    """n * |update| over the update's floating-point params, in float64; inf when a value is not finite."""
    total = 0.0
    for v in update.params.values():
        if v.is_floating_point():
            total += float(torch.linalg.vector_norm(v.double())) ** 2
    return update.num_examples * math.sqrt(total) if math.isfinite(total) else math.inf


STACK_VALUES = 1 << 20
"""Values stacked at once when the peaks of many small tensors are taken in one call."""


def _peaks(updates: Sequence[Update], name: str) -> torch.Tensor:
    """max |value| of tensor `name` of each update, in float64 (NaN where it holds a NaN): a few updates' tensors
    stacked per call (stack promotes mixed dtypes)."""
    per = max(1, STACK_VALUES // max(updates[0].params[name].numel(), 1))
    peaks = []
    for i in range(0, len(updates), per):
        group = [u.params[name].detach() for u in updates[i:i + per]]
        peaks.append(torch.stack(group).reshape(len(group), -1).abs().amax(dim=1).double())
    return torch.cat(peaks)


def _peak(params: Params, name: str) -> float:
    known = getattr(params, "peaks", None)  # a spooled upload's, recorded by its check (net/spool.py)
    return known[name] if known is not None and name in known else float(params[name].detach().abs().max())


def overflows(updates: Sequence[Update], like: Params) -> bool:
    """Whether sum of n_i * update_i leaves the range of `like`'s dtypes (checked exactly, in float64, only when
    a cheap bound says it might)."""
    for name, ref in like.items():
        if not ref.is_floating_point():
            continue
        top = torch.finfo(ref.dtype).max
        parts = [u for u in updates if name in u.params and shape_of(u.params, name).numel()]
        if not parts:
            continue
        if all(in_memory(u.params) for u in parts):  # a few stacked per call
            bound = float(_peaks(parts, name) @ torch.tensor([float(u.num_examples) for u in parts],
                                                             dtype=torch.float64))
        else:  # spooled to disk: the peaks its check recorded, else one read at a time
            bound = sum(u.num_examples * _peak(u.params, name) for u in parts)
        if not bound <= top:  # NaN too
            total = sum(u.num_examples * u.params[name].detach().double() for u in parts)
            if not (isinstance(total, torch.Tensor) and bool(torch.isfinite(total).all())
                    and float(total.abs().max()) <= top):
                return True
    return False


@dataclass(frozen=True)
class Found(Generic[T]):
    """A round made sound without some updates: what `attempt` gave for the rest, the refusals, the clients to
    exclude."""

    result: T
    refused: list[Failure]
    excluded: tuple[int, ...]


def search(updates: Sequence[Update], attempt: Callable[[list[Update]], T | None]) -> Found[T] | None:
    """The round without the updates responsible, or None when no update can be blamed. `attempt(rest)` returns
    the round's outcome when `rest` makes a sound round, else None."""
    norms = {u.client_id: weighted_norm(u) for u in updates}
    rest = [u for u in updates if math.isfinite(norms[u.client_id])]
    dropped = [u for u in updates if not math.isfinite(norms[u.client_id])]
    suspects = sorted(rest, key=lambda u: (-norms[u.client_id], u.client_id))
    result = attempt(rest) if dropped and rest else None
    for u in suspects:
        if result is not None or len(rest) == 1:
            break
        rest.remove(u)
        dropped.append(u)
        result = attempt(rest)
    if result is None:
        return None
    median = statistics.median(norms[u.client_id] for u in rest)
    finite = [u for u in dropped if math.isfinite(norms[u.client_id])]
    if any(norms[u.client_id] < OUTLIER * median for u in finite):
        return None
    refused = []
    for u in sorted(dropped, key=lambda u: u.client_id):
        n = norms[u.client_id]
        if math.isfinite(n):
            times = f"{n / median:.3g} times" if median > 0 else "above"
            reason = (f"update refused: it would make the round's params or sum overflow (weighted norm {n:.3g}, "
                      f"{times} the median of the {len(rest)} kept); client excluded from the run")
        else:
            reason = "update refused: it holds NaN or infinite values"
        refused.append(Failure(u.client_id, u.round, reason))
    return Found(result, refused, tuple(sorted(u.client_id for u in finite)))
