"""Keep freed CPU memory mapped between batches (glibc).

Every batch allocates activations of the same large sizes and frees them again. By default glibc
returns such large freed blocks to the kernel, so the next batch faults the same memory in again page
by page, and page faults are slow, especially on virtual machines. Raising glibc's mmap and trim
thresholds keeps those blocks in the heap for the next batch to reuse, at the cost of a somewhat higher
resident set. bench/allocator.py measures the effect; docs/PERFORMANCE.md records what it found.
`selprune run` does this; since it changes the whole process, the Python API leaves it to the caller.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems: larger blocks are always mapped afresh


def keep_freed_memory() -> bool:
    """True if the allocator was tuned; False where there is no glibc mallopt (musl, macOS)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
