"""Arithmetic and (de)serialization of Params: ordered name -> tensor mappings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .errors import AggregationError
from .types import Params


def from_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a model's trainable parameters and floating buffers, by name."""
    out = {name: p.detach().clone() for name, p in model.named_parameters()}
    for name, b in model.named_buffers():
        if b.is_floating_point():
            out[name] = b.detach().clone()
    return out


def load_into(model: nn.Module, params: Params) -> None:
    """Copy params into a model's own tensors (the model never aliases them)."""
    missing = set(from_model_names(model)) - set(params)
    if missing:
        raise AggregationError(f"params lack tensors the model needs: {sorted(missing)}")
    model.load_state_dict(dict(params), strict=False)


def from_model_names(model: nn.Module) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    names += [n for n, b in model.named_buffers() if b.is_floating_point()]
    return names


def check_compatible(a: Params, b: Params, what: str = "update") -> None:
    """Raise AggregationError unless a and b hold the same names with the same shapes."""
    if list(a) != list(b) and set(a) != set(b):
        raise AggregationError(
            f"{what} names differ: missing {sorted(set(a) - set(b))}, unexpected {sorted(set(b) - set(a))}"
        )
    for name, t in a.items():
        if t.shape != b[name].shape:
            raise AggregationError(f"{what} tensor {name!r} has shape {tuple(b[name].shape)}, "
                                   f"expected {tuple(t.shape)}")


def sub(a: Params, b: Params) -> dict[str, torch.Tensor]:
    return {k: a[k] - b[k] for k in a}


def add(a: Params, b: Params) -> dict[str, torch.Tensor]:
    return {k: a[k] + b[k] for k in a}


def scale(a: Params, s: float) -> dict[str, torch.Tensor]:
    return {k: a[k] * s for k in a}


def zeros_like(a: Params) -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def clone(a: Params) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in a.items()}


def num_bytes(a: Params) -> int:
    """Raw payload size of the tensors (what the wire carries before framing)."""
    return sum(t.numel() * t.element_size() for t in a.values())


def num_elements(a: Params) -> int:
    return sum(t.numel() for t in a.values())


def all_finite(a: Params) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in a.values())


def equal(a: Params, b: Params) -> bool:
    """Bit-identical: same names, same order, same values."""
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def allclose(a: Params, b: Params, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    return list(a) == list(b) and all(torch.allclose(a[k], b[k], rtol=rtol, atol=atol) for k in a)


def encode(params: Params, metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize to safetensors bytes (contiguous copies; the caller's tensors are untouched)."""
    return st_save({k: v.detach().contiguous() for k, v in params.items()}, metadata=dict(metadata or {}))


def decode(blob: bytes) -> dict[str, torch.Tensor]:
    return st_load(blob)


def prefixed(prefix: str, params: Params) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in params.items()}


def unprefixed(prefix: str, flat: Mapping[str, torch.Tensor], order: Iterable[str] | None = None
               ) -> dict[str, torch.Tensor]:
    keys = [k for k in flat if k.startswith(prefix)] if order is None else [prefix + k for k in order]
    return {k[len(prefix):]: flat[k] for k in keys}
