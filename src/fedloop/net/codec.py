"""Params on the wire: safetensors bytes, encoded once per round and streamed in chunks under gRPC's
message limit; and the checks every uploaded update must pass before it reaches aggregation."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from safetensors.torch import load, save

from ..errors import TransportError
from ..types import Params

CHUNK_BYTES = 1 << 20
"""1 MiB per message: far under gRPC's 4 MiB default, so any model size streams."""


def encode(params: Params) -> bytes:
    return save({k: v.detach().contiguous() for k, v in params.items()})


def chunks(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start:start + size])


def decode(data: bytes, what: str) -> dict[str, torch.Tensor]:
    try:
        return dict(load(data))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad bytes
        raise TransportError(f"{what}: not valid safetensors bytes ({exc})") from None


def check_update(update: Params, reference: Params) -> str | None:
    """Why an uploaded update cannot be aggregated with `reference` (the global params), or None."""
    if update.keys() != reference.keys():
        missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
        return f"tensor names differ from the global params: missing {missing}, unexpected {extra}"
    for name, t in update.items():
        ref = reference[name]
        if t.shape != ref.shape:
            return f"tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
        if t.dtype != ref.dtype:
            return f"tensor {name!r} has dtype {t.dtype}, expected {ref.dtype}"
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"tensor {name!r} holds NaN or infinite values"
    return None
