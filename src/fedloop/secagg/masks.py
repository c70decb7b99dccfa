"""The masks that hide a client's vector, from `cryptography` only.

Each client holds two X25519 key pairs per round: one whose agreement with a neighbour's gives the pair's shared
mask seed, and one whose agreement gives the key that encrypts the shares they send each other. HKDF-SHA256 turns
an agreement into a 32-byte seed or key (with the round and the purpose in its info), and AES-256-CTR expands a seed
into a mask vector over Z_{2^bits}. The pair's masks cancel in the sum: the client with the smaller id adds the
mask, the other subtracts it. A self mask (a fresh seed per client) is added on top, so that a client that is late
rather than dropped cannot have its input unmasked.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .ring import Ring


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def usable(public: bytes) -> bool:
    """Whether a 32-byte X25519 public key agrees to a nonzero secret (a low-order point gives all zeros with any
    private key, since X25519 clamps private scalars to multiples of the cofactor)."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


def derive(mine: X25519PrivateKey, theirs: bytes, purpose: str, round: int) -> bytes:
    """32 bytes shared by the two parties: HKDF-SHA256 of their X25519 agreement, bound to the purpose and round."""
    agreed = mine.exchange(X25519PublicKey.from_public_bytes(theirs))
    info = f"fedloop secagg {purpose} round {round}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(agreed)


def expand(seed: bytes, n: int, ring: Ring) -> np.ndarray:
    """n uniform residues mod 2^bits: the AES-256-CTR keystream of `seed` (zero nonce: one seed, one vector), in
    4-byte words for rings of up to 32 bits and 8-byte words above."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    width = 4 if ring.bits <= 32 else 8
    words = np.frombuffer(encryptor.update(bytes(width * n)), dtype=np.uint32 if width == 4 else np.uint64)
    return words.astype(np.uint64) & np.uint64(ring.modulus - 1)


def pair(y: np.ndarray, seed: bytes, me: int, other: int, ring: Ring, remove: bool = False) -> np.ndarray:
    """y with the pairwise mask of `me` toward `other` applied (added toward a larger id, subtracted toward a
    smaller, so a pair's masks cancel in the sum), or with it taken off again (`remove`)."""
    m = expand(seed, y.size, ring)
    return ring.add(y, m) if (me < other) != remove else ring.sub(y, m)


def masked(x: np.ndarray, me: int, self_seed: bytes, pair_seeds: dict[int, bytes], ring: Ring) -> np.ndarray:
    """x + self mask + the pairwise masks, mod 2^bits."""
    y = ring.add(x, expand(self_seed, x.size, ring))
    for other, seed in sorted(pair_seeds.items()):
        y = pair(y, seed, me, other, ring)
    return y
