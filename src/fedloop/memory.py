"""Give the memory a simulation has just freed back to the system (glibc's malloc_trim), at the two points where
it frees a lot at once: after a dataset is decoded, and before a round of the processes executor whose last round
brought back large results (sim/processes.py, TRIM_AFTER).

glibc keeps freed blocks in its heap for reuse, and after it frees a block it had mapped on its own it raises its
mmap threshold to that block's size (up to 32 MiB), so later blocks of that size come from the heap as well, and
after they are freed they stay in the process. On W1 of benchmarks/engine.py (the processes executor) the fleet's
process kept 475-510 MB where it needs under 300, and the process tree's PSS reached about 1 GB. malloc_trim(0) hands
the free pages of the heap back without changing how memory is allocated, so a training step or an aggregation
that frees and allocates large temporaries keeps reusing them. (Fixing the threshold at 1 MiB with mallopt instead,
tried first, made every such temporary a fresh mapping: the vectorized executor and the robust aggregators ran up to
3x slower on their page faults.) Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # a C library without it (musl)
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_TRIM = _malloc_trim()


def return_freed_memory() -> bool:
    """Hand the allocator's free pages back to the system; whether the C library could (and released any)."""
    return bool(_TRIM(0)) if _TRIM is not None else False
