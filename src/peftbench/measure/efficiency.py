"""Training throughput and efficiency: tokens/s, achieved model FLOP/s and MFU.

MFU (model FLOPs utilisation) = model FLOPs per training second / the device's peak for the
precision the matmuls ran in. Model FLOPs are counted (measure/flops.py), so the figure needs
no 6·N·T estimate; gradient checkpointing's recomputation is not in them (it is work the
method chose to redo, not work the model needs).

Peaks: dense tensor-core figures from NVIDIA's data sheets, matched on the CUDA device name;
`--peak-tflops` (measure.peak_tflops) replaces them. On a CPU there is no data-sheet figure that
torch reaches, so the peak is measured: a ~1 s fp32 matmul probe at the run's thread count, run
once per machine and cached (PEFTBENCH_CACHE_DIR, else $XDG_CACHE_HOME/peftbench or
~/.cache/peftbench, file peak.json, keyed by CPU model, threads, torch version and matmul backend).
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftbench.train import matmul

TFLOP = 1e12
# (name pattern, {precision: dense peak TFLOP/s}); first match wins, so variants precede their family.
# fp32 is the plain (non-tensor-core) rate; tf32 the tensor-core rate fp32 matmuls get with TF32 on.
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"h100.*pcie", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    (r"h100.*nvl", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (r"h100|h200|gh200", {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    (r"h800", {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    (r"b200", {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1100.0, "fp32": 75.0}),
    (r"a100|a800", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"l40s", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    (r"l40\b", {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    (r"\bl4\b", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"a10g?\b", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),  # NVIDIA lists the A10G as the A10
    (r"a40\b", {"bf16": 149.7, "fp16": 149.7, "tf32": 74.8, "fp32": 37.4}),
    (r"rtx 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),  # fp32 accumulate
    (r"rtx 3090", {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6}),  # fp32 accumulate
    (r"v100", {"fp16": 125.0, "fp32": 15.7}),  # no bf16 or tf32 tensor cores
    (r"\bt4\b", {"fp16": 65.0, "fp32": 8.1}),
]
PROBE_SIZE = 1024  # 2.1 GFLOP a matmul: long enough to time, short enough for several in a second
PROBE_SECONDS = 1.0


@dataclass
class Peak:
    flops: float | None  # FLOP/s; None where the device is unknown and no override was given
    source: str  # "--peak-tflops", "gpu table: <name> <precision>", "cpu probe (fp32, N threads)" or "unknown: ..."


@dataclass
class Efficiency:
    tokens_per_second: float | None
    model_flops_per_second: float | None
    mfu: float | None  # a fraction of the peak (0.4 = 40%)
    peak: Peak

    def costs(self) -> dict[str, Any]:
        """As the store's Costs fields."""
        return {"tokens_per_second": self.tokens_per_second, "model_flops_per_second": self.model_flops_per_second,
                "mfu": self.mfu, "peak_flops": self.peak.flops, "peak_source": self.peak.source}


def matmul_precision(device: torch.device, precision: str = "fp32") -> str:
    """The precision the training matmuls run in: bf16, fp16, tf32 (fp32 on CUDA with TF32 on) or fp32.

    precision: the run's train.precision (auto: bf16 on a CUDA device that has it, else fp32)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16"):
        return precision
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "fp32"


def gpu_peak(name: str, precision: str) -> Peak:
    low = name.lower()
    for pattern, peaks in GPU_PEAKS:
        if re.search(pattern, low):
            value = peaks.get(precision) or (peaks.get("fp32") if precision == "tf32" else None)
            if value is None:
                return Peak(None, f"unknown: {name} has no {precision} peak in the table; pass --peak-tflops")
            return Peak(value * TFLOP, f"gpu table: {name} {precision}")
    return Peak(None, f"unknown: {name} is not in the table of GPU peaks; pass --peak-tflops")


def cache_file() -> Path:
    root = os.environ.get("PEFTBENCH_CACHE_DIR")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftbench")
    return Path(root) / "peak.json"


def cpu_model() -> str:
    return matmul.cpuinfo("model name") or platform.processor() or platform.machine()


def probe_cpu(threads: int, seconds: float = PROBE_SECONDS, size: int = PROBE_SIZE) -> float:
    """Best fp32 matmul rate (FLOP/s) over ~`seconds` at `threads` torch threads, through the matmul backend
    in place (train/matmul.py: a run's MFU divides by what its own layers' library reaches)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)  # leaves the global RNG, and so the run, untouched
        a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
        linear = torch.nn.functional.linear  # as the run's layers call it: through the matmul backend in place
        linear(a, b)  # warm-up: thread pool and allocator
        best, end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            linear(a, b)
            best = max(best, 2 * size**3 / max(time.perf_counter() - t0, 1e-9))
        return best
    finally:
        torch.set_num_threads(before)


def _library() -> str | None:
    """The matmul library the probe runs through, where it is not torch's own (train/matmul.py)."""
    backend = matmul.current()["backend"]
    return None if backend == "torch" else backend


def peak_key(threads: int) -> str:
    """The peak cache's key: what the probe's rate depends on."""
    library = _library()
    return f"{cpu_model()} | {threads} threads | torch {torch.__version__}" + (f" | {library}" if library else "")


def cpu_peak(threads: int | None = None, at_least: float = 0.0) -> Peak:
    """The measured fp32 peak at this thread count: from the cache, else probed once and cached.

    A probe taken while other work keeps a core busy reads low, so it is not cached; and a cached
    peak below `at_least` (a rate a run just achieved) is probed again, keeping the higher."""
    from peftbench.train.threads import other_load

    threads = threads or torch.get_num_threads()
    key, library = peak_key(threads), _library()
    via = f" via {library}" if library else ""
    path = cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    value = cached.get(key)
    if not isinstance(value, (int, float)) or value <= at_least:
        value = max(probe_cpu(threads), value if isinstance(value, (int, float)) else 0.0)
        if other_load() >= 0.5:  # busy: use it for this run only
            return Peak(float(value), f"cpu probe (fp32 matmul{via}, {threads} threads; machine busy, not cached)")
        try:  # a cache that cannot be written costs a probe next time, nothing else
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**cached, key: value}, indent=1))
            tmp.replace(path)
        except OSError:
            pass
    return Peak(float(value), f"cpu probe (fp32 matmul{via}, {threads} threads)")


def device_peak(device: torch.device, precision: str, override_tflops: float | None = None) -> Peak:
    if override_tflops:
        return Peak(override_tflops * TFLOP, "--peak-tflops")
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device), precision)
    if device.type == "cpu":
        return cpu_peak()
    return Peak(None, f"unknown: no peak for device {device.type}; pass --peak-tflops")


def efficiency(tokens: int, model_flops: int, seconds: float, peak: Peak, devices: int = 1) -> Efficiency:
    """Throughput over the training seconds (validation excluded); None where nothing was timed.

    tokens and model_flops are all processes' together, so the peak is one device's times `devices`."""
    if seconds <= 0:
        return Efficiency(None, None, None, peak)
    achieved = model_flops / seconds
    return Efficiency(tokens / seconds, achieved, achieved / (peak.flops * devices) if peak.flops else None, peak)


def measure(tokens: int, model_flops: int, seconds: float, device: torch.device, precision: str = "fp32",
            override_tflops: float | None = None, devices: int = 1) -> Efficiency:
    """A run's efficiency on `device`, whose peak is looked up (or probed) for the precision its matmuls ran in."""
    peak = device_peak(device, matmul_precision(device, precision), override_tflops)
    eff = efficiency(tokens, model_flops, seconds, peak, devices)
    if device.type == "cpu" and not override_tflops and eff.mfu is not None and eff.mfu > 1:  # a stale, low probe
        eff = efficiency(tokens, model_flops, seconds, cpu_peak(at_least=eff.model_flops_per_second or 0.0), devices)
    return eff
