"""Discrete Gaussian noise N_Z(0, sigma^2) (P[x] proportional to exp(-x^2 / (2 sigma^2)) on the integers), which
each client adds to its quantised update under distributed DP (Kairouz, Liu and Steinke, ICML 2021).

The sampler is Canonne, Kamath and Steinke's (NeurIPS 2020, Algorithm 3): draw Y from the discrete Laplace
distribution of scale t = floor(sigma) + 1 (the difference of two geometric variables), accept it with probability
exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2)), else draw again. It runs vectorised in float64 on 53-bit uniforms from
the client's secret stream, not in exact rational arithmetic: its outputs are integers, but their distribution
matches N_Z(0, sigma^2) only up to float64 rounding of the acceptance probabilities and the geometric draws."""

from __future__ import annotations

import math

import numpy as np

from ..randomness import SecretStream


def discrete_gaussian(n: int, sigma: float, stream: SecretStream) -> np.ndarray:
    """n independent draws of N_Z(0, sigma^2) as int64."""
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"discrete Gaussian scale {sigma}: must be a finite number > 0")
    t = math.floor(sigma) + 1
    out = np.empty(n, dtype=np.int64)
    done = 0
    while done < n:
        want = max(64, int((n - done) * 1.6))  # a batch with room for rejections; the loop draws what is missing
        u = stream.uniform(3 * want).numpy().reshape(3, want)
        g1 = np.floor(-t * np.log(u[0]))
        g2 = np.floor(-t * np.log(u[1]))
        y = g1 - g2
        keep = u[2] < np.exp(-((np.abs(y) - sigma * sigma / t) ** 2) / (2 * sigma * sigma))
        got = y[keep][:n - done].astype(np.int64)
        out[done:done + got.size] = got
        done += got.size
    return out
