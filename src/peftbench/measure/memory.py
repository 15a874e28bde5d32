"""Peak memory of one run: CUDA max allocated (and max reserved) on GPU, process peak RSS on CPU.

reset_peak starts a run's peaks afresh (CUDA resets allocated and reserved together), so runs in
one process (compare, sweep) each get their own."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets VmHWM, so each run in one process gets its own peak
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def peak_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "peak_rss"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_rss_process"


def peak_reserved_bytes(device: torch.device) -> int | None:
    """CUDA: the caching allocator's peak reservation since reset_peak (what the GPU had to hold); None elsewhere."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_reserved(device))
    return None
