"""What a client's masked vector holds, and how the server reads the sum back.

A round's vector has the model's coordinates (params by name, in sorted order, each flattened), then one for the
training loss, then one for the sample count:
  w * clip(u)            each update coordinate clipped to [-clip, clip] and weighted (w = the client's sample
                         count for a sample-weighted mean, 1 for a uniform one);
  n / N * min(loss, LOSS_CAP) / LOSS_CAP * R    the example-weighted loss, scaled into the ring's range R;
  n                      the sample count itself, unscaled.
All but the last are quantised by the round's Ring (range R = clip * the largest weight, `clients` summands), so
the sum never wraps. The server divides the sums by the sum of the weights; the count's sum is checked against the
counts the survivors declared. The decoded mean differs from the mean of the clipped updates by less than
clients / (scale * sum of weights) per coordinate (Ring.error_bound over the weights).

Under distributed DP (`noise_multiplier` > 0; weights uniform) each client also adds discrete Gaussian noise
N_Z(0, sigma_c^2) in ring units to every model coordinate, with sigma_c = z * l2_clip * scale / sqrt(threshold + 1):
the sum of any round that is not aborted (at least threshold + 1 survivors: each survivor's self-mask seed is rebuilt
from `threshold` shares held by other survivors) carries at least the noise (z * l2_clip)^2 of central DP. The
ring's range then has room for 10 standard deviations of the summed noise on top of the clipped values (a wrap is a
10-sigma event per coordinate), and the loss coordinate is left at 0 (the clients' training losses are not
private).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..randomness import SecretStream
from ..types import ConfigValue, Params
from .noise import discrete_gaussian
from .ring import Ring

LOSS_CAP = 1000.0
"""Training losses above this are carried as this (the round's mean loss is a report, not a model input)."""
PREFIX = "secagg."


@dataclass(frozen=True)
class RoundSpec:
    """The numbers every party of one round must share to mask and sum the same vectors; sent in each task."""

    bits: int
    clip: float
    clients: int
    max_examples: int
    """The largest sample count among the round's clients (as they declared them)."""
    uniform: bool
    """Each client weighs 1 (a uniform mean) rather than its sample count."""
    threshold: int
    size: int
    """The model's number of coordinates."""
    noise_multiplier: float = 0.0
    """Distributed DP's z (0: no noise)."""
    l2_clip: float = 0.0
    """Distributed DP's L2 clip norm C of each update (clients clip before they encode)."""

    def __post_init__(self) -> None:
        if self.noise_multiplier > 0 and (not self.uniform or not self.l2_clip > 0):
            raise ValueError("distributed DP needs uniform weights and an L2 clip norm")
        if self.clients < 1 or self.max_examples < 1 or self.size < 1 or self.threshold < 2:
            raise ValueError(f"secure aggregation cannot run a round of {self.clients} clients with at most "
                             f"{self.max_examples} examples, threshold {self.threshold} and {self.size} coordinates")
        if self.clients * self.max_examples >= 1 << (self.bits - 1):
            raise ValueError(f"secagg.bits = {self.bits}: the sum of {self.clients} sample counts of up to "
                             f"{self.max_examples} could wrap; raise bits")
        self.ring  # noqa: B018 - a ring that cannot hold the sum raises here

    @property
    def max_weight(self) -> int:
        return 1 if self.uniform else self.max_examples

    @property
    def ring(self) -> Ring:
        summed = self.noise_multiplier * self.l2_clip * math.sqrt(self.clients / (self.threshold + 1))
        headroom = 10 * summed / self.clients
        return Ring(self.bits, self.clip * self.max_weight + headroom, self.clients)

    @property
    def noise_stddev(self) -> float:
        """sigma_c: each client's discrete Gaussian noise, in ring units (0 without distributed DP)."""
        return self.noise_multiplier * self.l2_clip * self.ring.scale / math.sqrt(self.threshold + 1)

    @property
    def sensitivity(self) -> float:
        """One client's largest L2 contribution to the sum, in ring units: its clipped update scaled, plus at most
        one unit per coordinate of rounding."""
        return self.l2_clip * self.ring.scale + math.sqrt(self.size)

    @property
    def length(self) -> int:
        return self.size + 2

    def error_bound(self, total_weight: float) -> float:
        """The largest difference between a decoded mean coordinate and the mean of the clipped inputs."""
        return self.ring.error_bound() / total_weight

    def to_config(self) -> dict[str, ConfigValue]:
        return {PREFIX + k: v for k, v in (("bits", self.bits), ("clip", self.clip), ("clients", self.clients),
                                           ("max_examples", self.max_examples), ("uniform", self.uniform),
                                           ("threshold", self.threshold), ("size", self.size),
                                           ("noise_multiplier", self.noise_multiplier), ("l2_clip", self.l2_clip))}

    @classmethod
    def from_config(cls, config: Mapping[str, ConfigValue]) -> RoundSpec:
        """The spec a task carries; ValueError naming what is missing or of the wrong type."""
        types = {"bits": int, "clip": float, "clients": int, "max_examples": int, "uniform": bool,
                 "threshold": int, "size": int, "noise_multiplier": float, "l2_clip": float}
        values = {}
        for name, kind in types.items():
            value = config.get(PREFIX + name)
            if type(value) is not kind or (kind is float and not math.isfinite(value)):  # type: ignore[arg-type]
                raise ValueError(f"task config {PREFIX + name} = {value!r}: expected a finite {kind.__name__}")
            values[name] = value
        return cls(**values)  # type: ignore[arg-type]


def encode(update: Params, loss: float | None, num_examples: int, spec: RoundSpec, stream: SecretStream
           ) -> np.ndarray:
    """A client's vector (residues mod 2^bits) from its update, training loss and sample count."""
    if not 1 <= num_examples <= spec.max_examples:
        raise ValueError(f"{num_examples} examples: the round's spec allows 1..{spec.max_examples}")
    flat = torch.cat([update[k].detach().double().flatten() for k in sorted(update)])
    if flat.numel() != spec.size:
        raise ValueError(f"an update of {flat.numel()} coordinates; the round's model has {spec.size}")
    w = 1.0 if spec.uniform else float(num_examples)
    ring = spec.ring
    if spec.noise_multiplier > 0 and (norm := float(torch.linalg.vector_norm(flat))) > spec.l2_clip * (1 + 1e-6):
        raise ValueError(f"an update of L2 norm {norm:.6g} under distributed DP, whose clip norm is {spec.l2_clip:g}")
    safe = 0.0 if loss is None or not math.isfinite(loss) or spec.noise_multiplier > 0 else \
        min(max(loss, 0.0), LOSS_CAP)
    scaled_loss = num_examples / spec.max_examples * safe / LOSS_CAP * ring.clip
    values = torch.cat([flat.clamp(-spec.clip, spec.clip) * w, torch.tensor([scaled_loss], dtype=torch.float64)])
    count = np.array([num_examples], dtype=np.uint64)
    encoded = ring.encode(values, stream)
    if spec.noise_multiplier > 0:
        noise = discrete_gaussian(spec.size, spec.noise_stddev, stream).astype(np.uint64)  # two's complement
        encoded[:spec.size] = ring.add(encoded[:spec.size], noise)
    return np.concatenate([encoded, count])


@dataclass(frozen=True)
class SecureSum:
    """What the server learns from a round: the weighted mean update, and totals over the survivors."""

    params: dict[str, torch.Tensor]
    num_clients: int
    num_examples: int
    train_loss: float | None
    error_bound: float
    """The largest quantisation error of any coordinate of `params`."""
    spec: RoundSpec | None = None
    """The round's spec (distributed DP's accounting reads its noise and sensitivity)."""


def decode(total: np.ndarray, spec: RoundSpec, reference: Params, survivors: int, declared: int) -> SecureSum:
    """The round's mean from the ring sum of `survivors` vectors; ValueError when the masked sample counts do not
    add up to the `declared` counts of the survivors."""
    ring = spec.ring
    count = int(total[-1])
    count = count - ring.modulus if count >= 1 << (spec.bits - 1) else count
    if count != declared:
        raise ValueError(f"the masked sample counts add up to {count}; the survivors declared {declared}")
    sums = ring.decode_sum(total[:-1])
    weight = float(survivors if spec.uniform else count)
    params, start = {}, 0
    for name in sorted(reference):
        ref = reference[name]
        n = ref.numel()
        params[name] = torch.from_numpy(sums[start:start + n] / weight).reshape(ref.shape).to(ref.dtype)
        start += n
    loss = None if spec.noise_multiplier > 0 else float(sums[-1]) * spec.max_examples * LOSS_CAP / ring.clip / count
    return SecureSum(params, survivors, count, loss, spec.error_bound(weight), spec)
