"""glibc's malloc, told to return large blocks to the system (mmap) instead of keeping them on its heap.

glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which blocks of a
training step's activations (a few to 25 MB for MiniLM) come from the heap and stay there, fragmented:
a multiple-choice run on long contexts peaked at 3.7 GB RSS against 1.9 GB with the threshold fixed at
4 MB, at the same CPU time (BENCHMARKS.md, "Multiple-choice memory"). A user's own MALLOC_MMAP_THRESHOLD_
stands; other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD = 4 << 20  # bytes: blocks this large or larger are mmapped and returned when freed
_done: dict[str, bool] = {}


def fix_mmap_threshold(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold once per process; True when it was set here."""
    if "set" in _done:
        return _done["set"]
    _done["set"] = False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or os.environ.get("PEFTBENCH_MALLOC") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):  # glibc only
            return False
        _done["set"] = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except OSError:
        pass
    return _done["set"]
