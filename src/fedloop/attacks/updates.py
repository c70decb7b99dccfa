"""Attacks on uploads: what a malicious client sends instead of its honest update. Pure functions of the update,
the round's honest updates (for the colluding attacks) and a seed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import torch

from ..types import Params, Update
from .options import AttackOptions


def alie_z(n: int, f: int) -> float:
    """Baruch et al. 2019: z such that the crafted value is still closer to the mean than s honest ones, with
    s = floor(n / 2 + 1) - f supporters needed for a majority."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    return NormalDist().inv_cdf(min(max(p, 0.5 + 1e-9), 1 - 1e-9))


def _mean_std(honest: Sequence[Params], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.stack([h[name].to(torch.float64) for h in honest])
    std = rows.std(dim=0, unbiased=False) if len(honest) > 1 else torch.zeros_like(rows[0])
    return rows.mean(dim=0), std


def attack_update(options: AttackOptions, update: Params, honest: Sequence[Params], n: int, f: int, seed: int
                  ) -> dict[str, torch.Tensor]:
    """What a malicious client sends in a round of n updates, f of them malicious, given the honest ones."""
    kind = options.kind
    if kind == "sign_flip":
        return {k: -(options.scale or 1.0) * v for k, v in update.items()}
    if kind == "gaussian":
        gen = torch.Generator().manual_seed(seed)
        return {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) * options.stddev for k, v in update.items()}
    if kind in ("scaled", "backdoor"):
        boost = options.scale if options.scale is not None else (float(n) if kind == "scaled" else 1.0)
        return {k: v * boost for k, v in update.items()}
    if kind == "nan":
        return {k: torch.full_like(v, math.nan) for k, v in update.items()}
    if kind == "zero":
        return {k: torch.zeros_like(v) for k, v in update.items()}
    if kind in ("alie", "ipm"):
        if not honest:  # nobody to collude with: behave honestly
            return dict(update)
        out = {}
        z = options.z if options.z is not None else alie_z(n, f)
        for k, v in update.items():
            mean, std = _mean_std(honest, k)
            crafted = mean - z * std if kind == "alie" else -options.epsilon * mean
            out[k] = crafted.to(v.dtype)
        return out
    return dict(update)  # label_flip: the poisoning happened in training


def attacked(options: AttackOptions, update: Update, honest: Sequence[Params], n: int, f: int) -> Update:
    """The Update a malicious client sends in place of `update`, its randomness seeded by (seed, round, client)."""
    seed = int(np.random.SeedSequence([options.seed, update.round, update.client_id]).generate_state(1)[0])
    params = attack_update(options, update.params, honest, n, f, seed)
    return Update(update.client_id, update.round, params, update.num_examples, update.metrics, update.extras,
                  update.version)
