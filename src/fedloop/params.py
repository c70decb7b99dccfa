"""Arithmetic and comparison of Params: ordered name -> tensor mappings."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .errors import AggregationError
from .types import Params, shape_of


def named_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Trainable parameters, then floating buffers (integer buffers such as counters are not params)."""
    return list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]


def from_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a model's params, by name."""
    return {name: t.detach().clone() for name, t in named_tensors(model)}


def load_into(model: nn.Module, params: Params) -> None:
    """Copy params into a model's own tensors (the model never aliases them)."""
    missing = {n for n, _ in named_tensors(model)} - set(params)
    if missing:
        raise AggregationError(f"params lack tensors the model needs: {sorted(missing)}")
    model.load_state_dict(dict(params), strict=False)


def check_compatible(a: Params, b: Params, what: str = "update") -> None:
    """Raise AggregationError unless a and b hold the same names with the same shapes."""
    if a.keys() != b.keys():
        raise AggregationError(
            f"{what} names differ: missing {sorted(set(a) - set(b))}, unexpected {sorted(set(b) - set(a))}"
        )
    for name in a:
        if shape_of(a, name) != shape_of(b, name):
            raise AggregationError(f"{what} tensor {name!r} has shape {tuple(shape_of(b, name))}, "
                                   f"expected {tuple(shape_of(a, name))}")


def clone(a: Params) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in a.items()}


def num_bytes(a: Params) -> int:
    """Raw payload size of the tensors (what the wire carries before framing)."""
    return sum(t.nbytes for t in a.values())


def num_elements(a: Params) -> int:
    return sum(t.numel() for t in a.values())


def equal(a: Params, b: Params) -> bool:
    """Bit-identical: same names, same order, same values."""
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def allclose(a: Params, b: Params, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    return list(a) == list(b) and all(torch.allclose(a[k], b[k], rtol=rtol, atol=atol) for k in a)


def norm(a: Params) -> float:
    """The L2 norm of all tensors together, accumulated in float64."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2 for t in a.values()))


class Scaled(Mapping[str, torch.Tensor]):
    """`params` times `factor`, computed as each tensor is read (so an update spooled on disk stays there)."""

    def __init__(self, params: Params, factor: float):
        self.params = params
        self.factor = factor

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.params[name] * self.factor

    def __iter__(self) -> Iterator[str]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)
