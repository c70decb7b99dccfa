"""Shamir t-of-n secret sharing over the prime field GF(2^521 - 1): any `threshold` shares give the secret back,
fewer give no information about it. SecAgg+ shares each client's mask seed and key with its neighbours, so that the
survivors can remove a dropped client's masks. This is arithmetic, not a cipher: the shares travel encrypted
(masks.py), and the polynomials' coefficients come from `secrets`."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from ..errors import ConfigError

PRIME = (1 << 521) - 1
"""A Mersenne prime above every 64-byte secret, so one polynomial shares a whole key."""
SECRET_BYTES = 64


def split(secret: bytes, threshold: int, holders: Sequence[int]) -> dict[int, int]:
    """Shares of `secret` (at most 64 bytes) for each holder id (ids >= 1, distinct): f(holder) of a random
    polynomial f of degree threshold - 1 with f(0) = the secret."""
    if len(secret) > SECRET_BYTES:
        raise ValueError(f"a secret of {len(secret)} bytes; at most {SECRET_BYTES}")
    check(threshold, holders)
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in holders:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        out[x] = y
    return out


def combine(shares: Mapping[int, int], threshold: int, size: int) -> bytes:
    """The `size`-byte secret from at least `threshold` shares (holder id -> share), by Lagrange interpolation at
    0; ValueError with fewer."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares; the secret needs {threshold}")
    points = sorted(shares.items())[:threshold]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * size):
        raise ValueError("the shares do not combine to a secret of this size (shares of different secrets?)")
    return secret.to_bytes(size, "big")


def consistent(shares: Mapping[int, int], threshold: int) -> bool:
    """Whether every share lies on the polynomial of degree threshold - 1 through the first `threshold` of them (a
    wrong share among more than `threshold` is then caught instead of silently giving a wrong secret)."""
    points = sorted(shares.items())
    base, rest = points[:threshold], points[threshold:]
    inverse = []
    for i, (xi, _) in enumerate(base):
        den = 1
        for j, (xj, _) in enumerate(base):
            if i != j:
                den = den * (xi - xj) % PRIME
        inverse.append(pow(den, -1, PRIME))
    for x, y in rest:
        value = 0
        for i, (_, yi) in enumerate(base):
            num = 1
            for j, (xj, _) in enumerate(base):
                if i != j:
                    num = num * (x - xj) % PRIME
            value = (value + yi * num * inverse[i]) % PRIME
        if value != y:
            return False
    return True


def check(threshold: int, holders: Sequence[int]) -> None:
    """ConfigError unless 2 <= threshold <= the number of holders and the holder ids are distinct and >= 1."""
    if len(set(holders)) != len(holders) or any(h < 1 for h in holders):
        raise ConfigError(f"share holders must be distinct ids >= 1, got {sorted(holders)[:10]}")
    if not 2 <= threshold <= len(holders):
        raise ConfigError(f"secagg threshold {threshold}: needs 2 <= threshold <= {len(holders)} holders")
