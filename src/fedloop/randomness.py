"""The randomness a privacy guarantee rests on: DP noise and DP sampling decisions.

Each party draws from its own cryptographically secure stream: a 256-bit key from `secrets` (never sent, never
written), expanded by AES-256 in counter mode from `cryptography`. The stream is per process (a client process
holds its client's, a server process the server's; in a simulation every draw comes from the simulating process's
own stream, which no one else holds), and a forked child process gets a new key, never its parent's stream.

From the stream's bytes: uniform floats with 53 random bits in (0, 1), Gaussians by the Box-Muller transform in
float64 (cast to the tensor's dtype at the end), Bernoulli decisions, uniform integers (by rejection, so unbiased)
and samples without replacement (a partial Fisher-Yates shuffle).

`Seeded` draws the same things from a torch generator seeded by the run's seed: the reproducible research setting
(privacy.secure_noise = false), which protects nothing against anyone who holds the seed.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

REKEY_BYTES = 1 << 34
"""Keystream bytes drawn under one key and counter before the stream takes a fresh key (16 GiB)."""
GAUSSIAN_BLOCK = 1 << 16
"""Pairs of uniforms turned into Gaussians at a time (1 MiB of keystream)."""


class Draws(Protocol):
    """Where a mechanism's random draws come from: the party's secret stream, or a seeded generator."""

    def gaussian(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor: ...

    def sample(self, n: int, k: int) -> torch.Tensor: ...


class SecretStream:
    """A party's secret random stream (AES-256-CTR keystream under a key from `secrets`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rekey()

    def _rekey(self) -> None:
        cipher = Cipher(algorithms.AES(secrets.token_bytes(32)), modes.CTR(secrets.token_bytes(16)))
        self._keystream = cipher.encryptor()
        self._drawn = 0

    def bytes(self, n: int) -> bytes:
        """n bytes of the keystream (the encryption of zeros): never the same bytes twice."""
        return bytes(self._fill(n)[:n])

    def _fill(self, n: int) -> bytearray:
        """A fresh buffer holding n keystream bytes (and up to 15 more that are not read)."""
        out = bytearray(n + 15)
        self._fill_into(n, out)
        return out

    def _fill_into(self, n: int, out: bytearray) -> None:
        """The next n keystream bytes into the start of `out` (which has room for n + 15)."""
        with self._lock:
            if self._drawn + n > REKEY_BYTES:
                self._rekey()
            self._drawn += n
            self._keystream.update_into(_zeros(n), out)

    def words(self, n: int) -> torch.Tensor:
        """n uniform 63-bit non-negative integers (int64)."""
        if n == 0:
            return torch.empty(0, dtype=torch.int64)
        return torch.frombuffer(self._fill(8 * n), dtype=torch.int64, count=n) & ((1 << 63) - 1)

    def uniform(self, n: int) -> torch.Tensor:
        """n float64 uniforms in the open interval (0, 1), each with 53 random bits: (k + 1/2) / 2^53."""
        return (self.words(n) >> 10).to(torch.float64).add_(0.5).mul_(2.0 ** -53)

    def gaussian(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws of `shape`: the Box-Muller transform of pairs of 53-bit uniforms (u, v) gives
        sqrt(-2 ln u) cos(2 pi v) and sqrt(-2 ln u) sin(2 pi v), in float64, cast to dtype at the end. Computed a
        block of pairs at a time, so the keystream and the arithmetic stay in cache."""
        n = math.prod(shape)
        pairs = (n + 1) // 2
        out = torch.empty(2 * pairs, dtype=torch.float64)
        block = bytearray(16 * min(GAUSSIAN_BLOCK, pairs) + 15)
        for start in range(0, pairs, GAUSSIAN_BLOCK):
            m = min(GAUSSIAN_BLOCK, pairs - start)
            self._fill_into(16 * m, block)
            words = torch.frombuffer(block, dtype=torch.int64, count=2 * m)
            u = ((words >> 11) & ((1 << 53) - 1)).to(torch.float64).add_(0.5).mul_(2.0 ** -53)
            radius = u[:m].log_().mul_(-2.0).sqrt_()
            angle = u[m:].mul_(2.0 * math.pi)
            torch.mul(radius, torch.cos(angle), out=out[2 * start:2 * start + m])
            torch.mul(radius, torch.sin(angle), out=out[2 * start + m:2 * (start + m)])
        return out[:n].reshape(shape).to(dtype)

    def integers(self, high: int, n: int) -> torch.Tensor:
        """n uniform integers in [0, high), unbiased (a draw at or above the largest multiple of high is redrawn)."""
        if not 0 < high <= 1 << 62:
            raise ValueError(f"high = {high}: expected 1..2^62")
        limit = ((1 << 63) // high) * high
        out = torch.empty(0, dtype=torch.int64)
        while len(out) < n:
            w = self.words(n - len(out) + 8)
            out = torch.cat([out, w[w < limit] % high])
        return out[:n]

    def bernoulli(self, p: float, n: int) -> torch.Tensor:
        """n independent decisions, each True with probability p (p compared with a 53-bit uniform)."""
        return self.uniform(n) < p

    def sample(self, n: int, k: int) -> torch.Tensor:
        """k of range(n) uniformly without replacement: the first k of a uniform random permutation (the order of
        n random 63-bit keys; two equal keys, probability below n^2 / 2^64, keep their order)."""
        if not 0 <= k <= n:
            raise ValueError(f"cannot sample {k} of {n} without replacement")
        return torch.sort(self.words(n), stable=True).indices[:k]

    # The np.random.Generator methods a Sampler uses, so the DP client sampling can draw from the secret stream.
    def random(self, n: int) -> np.ndarray:
        return self.uniform(n).numpy()

    def choice(self, n: int, size: int, replace: bool = False, p: np.ndarray | None = None) -> np.ndarray:
        if replace or p is not None:
            raise ValueError("the secret stream samples uniformly without replacement only")
        return self.sample(n, size).numpy()


_ZEROS = bytes(1 << 20)


def _zeros(n: int) -> bytes | memoryview:
    """n zero bytes to encrypt (a view of a shared block when it is large enough)."""
    return memoryview(_ZEROS)[:n] if n <= len(_ZEROS) else bytes(n)


_STREAM: tuple[int, SecretStream] | None = None
_GUARD = threading.Lock()


def secret() -> SecretStream:
    """This process's secret stream (a new one, with a new key, in a forked child)."""
    global _STREAM
    with _GUARD:
        if _STREAM is None or _STREAM[0] != os.getpid():
            _STREAM = (os.getpid(), SecretStream())
        return _STREAM[1]


class Seeded:
    """Draws from a torch generator seeded by the run's seed: reproducible, and so secret from no one who has the
    seed (privacy.secure_noise = false)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def gaussian(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=dtype)

    def sample(self, n: int, k: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator)[:k]


def noise_like(source: Draws, tensors: Mapping[str, torch.Tensor], std: float) -> dict[str, torch.Tensor]:
    """N(0, std^2) noise shaped like each tensor and on its device, from one draw split in name order (one call:
    the per-call cost of a draw is paid once, not once per tensor). The draw is made on the CPU, from the CPU's
    secret stream, and moved: the device never holds the generator's state."""
    dtypes = {v.dtype for v in tensors.values()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float64
    flat = source.gaussian((sum(v.numel() for v in tensors.values()),), dtype)
    out, start = {}, 0
    for k, v in tensors.items():
        out[k] = (flat[start:start + v.numel()].view(v.shape) * std).to(v.device, v.dtype)
        start += v.numel()
    return out


def draws(secure: bool, seed: int) -> Draws:
    """The party's secret stream, or (secure = False) the seeded generator of the research setting."""
    return secret() if secure else Seeded(seed)
