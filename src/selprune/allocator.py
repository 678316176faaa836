"""Keep freed CPU memory mapped between batches (glibc).

glibc gives large freed blocks back to the kernel, and the next batch faults them in again page by
page: about 340,000 page faults per 4,096-token forward of the embedded model, which cost about a fifth
of that forward on this project's (virtual) machine (bench/allocator.py). Raising glibc's mmap and trim
thresholds keeps those blocks in the heap for reuse. `selprune run` does this; since it changes the
whole process, the Python API leaves it to the caller.
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
