"""The bytes of secure aggregation's messages: fixed-size records, so that a message's exact size is known before
it arrives and anything else is refused. Every map is a run of (client id as 8 bytes big-endian, payload) records
in increasing id order; a masked vector is its ring residues as little-endian words of 4 bytes (bits <= 32) or 8."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .shamir import PRIME

ID_BYTES = 8
KEYS_BYTES = 64
"""Two X25519 public keys: the one that encrypts shares, then the one that derives masks."""
SHARE_BYTES = 66
"""One share of GF(2^521 - 1)."""
CIPHERTEXT_BYTES = 12 + 2 * SHARE_BYTES + 16
"""AES-GCM nonce, the two shares (self-mask seed, mask key), tag."""
REVEAL_BYTES = 1 + SHARE_BYTES
"""b"b" (a share of the self-mask seed) or b"s" (of the mask key), then the share."""


class Malformed(ValueError):
    """Bytes that are not the message they claim to be."""


def pack(records: Mapping[int, bytes], size: int) -> bytes:
    out = bytearray()
    for i in sorted(records):
        if len(records[i]) != size:
            raise ValueError(f"record for client {i} has {len(records[i])} bytes, not {size}")
        out += i.to_bytes(ID_BYTES, "big") + records[i]
    return bytes(out)


def unpack(data: bytes, size: int, what: str) -> dict[int, bytes]:
    """The records of `data`; Malformed unless it is whole records in strictly increasing id order."""
    step = ID_BYTES + size
    if len(data) % step:
        raise Malformed(f"{what}: {len(data)} bytes is not a whole number of {step}-byte records")
    out: dict[int, bytes] = {}
    last = -1
    for start in range(0, len(data), step):
        i = int.from_bytes(data[start:start + ID_BYTES], "big")
        if i <= last or i >= 1 << 63:
            raise Malformed(f"{what}: client ids out of order or out of range")
        out[i] = data[start + ID_BYTES:start + step]
        last = i
    return out


def pack_ids(ids: Iterable[int]) -> bytes:
    return pack({i: b"" for i in ids}, 0)


def unpack_ids(data: bytes, what: str) -> set[int]:
    return set(unpack(data, 0, what))


def pack_reveals(reveals: Mapping[int, tuple[str, int]]) -> bytes:
    return pack({j: kind.encode() + value.to_bytes(SHARE_BYTES, "big") for j, (kind, value) in reveals.items()},
                REVEAL_BYTES)


def unpack_reveals(data: bytes, what: str) -> dict[int, tuple[str, int]]:
    out = {}
    for j, rec in unpack(data, REVEAL_BYTES, what).items():
        kind, value = rec[:1].decode("latin-1"), int.from_bytes(rec[1:], "big")
        if kind not in ("b", "s") or value >= PRIME:
            raise Malformed(f"{what}: the share for client {j} is not a field element of kind 'b' or 's'")
        out[j] = (kind, value)
    return out


def word_bytes(bits: int) -> int:
    return 4 if bits <= 32 else 8


def pack_vector(residues: np.ndarray, bits: int) -> bytes:
    return residues.astype("<u4" if bits <= 32 else "<u8").tobytes()


def unpack_vector(data: bytes, size: int, bits: int, what: str) -> np.ndarray:
    """`size` residues mod 2^bits; Malformed for any other length or a word outside the ring."""
    if len(data) != size * word_bytes(bits):
        raise Malformed(f"{what}: {len(data)} bytes; a vector of {size} residues takes {size * word_bytes(bits)}")
    words = np.frombuffer(data, dtype="<u4" if bits <= 32 else "<u8").astype(np.uint64)
    if bits not in (32, 64) and bool((words >> np.uint64(bits)).any()):
        raise Malformed(f"{what}: a residue at or above 2^{bits}")
    return words
