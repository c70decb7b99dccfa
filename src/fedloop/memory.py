"""Give freed memory back to the system: a process-wide setting of the C library's allocator, made once when
fedloop is imported.

glibc's malloc serves large blocks with mmap and unmaps them when freed, but after the first such block is freed it
raises that threshold to the block's size (up to 32 MiB), so later blocks of that size come from the heap and stay
in the process after they are freed. A simulation allocates and frees blocks of that size all the time (a dataset's
decoding buffers, each round's updates and their copies from worker processes); measured on W1 of
benchmarks/engine.py (processes executor), the process tree's PSS grew to about 1 GB with the adaptive threshold and
stayed under 800 MB with it fixed. Fixing it (mallopt M_MMAP_THRESHOLD) also fixes the trim threshold, so the top of
the heap goes back too. Elsewhere than glibc, or where the user set MALLOC_MMAP_THRESHOLD_ themselves, nothing
changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3
"""mallopt's parameter number for the mmap threshold (glibc's malloc.h)."""

MMAP_THRESHOLD = 1 << 20
"""Blocks of this size and larger are mapped and unmapped on their own (1 MiB: a model's tensors and a round's
updates are, a training step's small temporaries are not, so steps do not pay a system call per tensor)."""


def return_freed_memory(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix the allocator's mmap threshold at `threshold` bytes; whether the C library took the setting."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
