"""The fixed-point ring Z_{2^bits} that secure aggregation sums in.

A client's update is clipped to [-clip, clip] per coordinate, scaled by `scale` and rounded stochastically (up with
probability equal to the fractional part, from the client's secret stream, so the rounding is unbiased), then
taken mod 2^bits. With `clients` summands, `scale` is chosen so that the true sum of the rounded values always lies
in (-2^(bits-1), 2^(bits-1)): the ring sum then decodes to it exactly, and the decoded sum differs from the sum of
the clipped updates by less than clients / scale per coordinate (each rounding moves a value by less than 1 unit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the ring itself needs no torch: a light client can mask without it (benchmarks/net.py)
    import torch

    from ..randomness import SecretStream


@dataclass(frozen=True)
class Ring:
    """Z_{2^bits} with the scale that keeps a sum of `clients` values in [-clip, clip] from wrapping."""

    bits: int
    clip: float
    clients: int

    def __post_init__(self) -> None:
        if not 8 <= self.bits <= 62:
            raise ValueError(f"secagg bits {self.bits}: use 8..62")
        if self.clip <= 0 or self.clients < 1:
            raise ValueError("secagg needs clip > 0 and at least one client")
        if self.scale < 1:
            raise ValueError(f"secagg bits {self.bits} cannot hold the sum of {self.clients} values of range "
                             f"{self.clip} at any useful precision; raise bits")

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def scale(self) -> float:
        """Units per 1.0: the largest with clients * (clip * scale + 1) < 2^(bits-1)."""
        return ((1 << (self.bits - 1)) / self.clients - 1) / self.clip * (1 - 1e-12)

    def error_bound(self) -> float:
        """Largest per-coordinate difference between a decoded sum and the sum of the clipped inputs."""
        return self.clients / self.scale

    def encode(self, x: torch.Tensor, stream: SecretStream) -> np.ndarray:
        """x (float) clipped, scaled, stochastically rounded, as uint64 residues mod 2^bits."""
        v = x.detach().double().flatten().clamp(-self.clip, self.clip).numpy() * self.scale
        low = np.floor(v)
        up = stream.random(v.size) < (v - low)
        q = (low + up).astype(np.int64)
        return q.astype(np.uint64) & np.uint64(self.modulus - 1)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a + b) & np.uint64(self.modulus - 1)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a - b) & np.uint64(self.modulus - 1)

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """The float sum a ring sum of encoded values stands for (residues >= 2^(bits-1) are negative)."""
        signed = total.astype(np.int64)
        signed = np.where(signed >= 1 << (self.bits - 1), signed - self.modulus, signed)
        return signed.astype(np.float64) / self.scale
