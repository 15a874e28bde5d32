"""Which library multiplies fp32 matrices on a CPU: torch's own (MKL on x86) or oneDNN.

torch multiplies fp32 matrices on x86 CPUs with MKL, and MKL takes its generic code path on
CPUs that are not Intel's: on this project's AMD EPYC (Zen 5, AVX-512) MKL reached 80-90 GFLOP/s
a core where oneDNN, which torch also ships, reached 200-215 on the same shapes, in fp32 (no bf16
or TF32 inside). `onednn` routes `F.linear` (every nn.Linear: the models', peft's adapters', the
LM loss's head) through oneDNN's linear, forward and backward; `torch` leaves torch's choice.
`auto` (the default) takes oneDNN on x86 CPUs whose vendor is not GenuineIntel, else torch's: on a
Xeon with AMX, MKL's Intel path was as fast as oneDNN or faster (0.77-0.98x its CPU time, BENCHMARKS.md).

The choice is made from the CPU, never from a timing, so a config gives the same numbers on a
busy and an idle machine. Like the thread count, it changes the order of a matmul's sums, so
results differ in the last digits between the two (on the default comparison ~1e-7 in logits);
each run records which one ran (`threads.matmul` in its result). What falls outside it keeps
torch's path: other dtypes and devices, autocast (bf16 runs), tensor subclasses, compiled code.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

CHOICES = ("auto", "onednn", "torch")
ENV = "PEFTBENCH_MATMUL"  # the --matmul flag, passed on to worker processes
_torch_linear = F.linear
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _op() -> Any:
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def available() -> bool:
    return torch.backends.mkldnn.is_available() and _op() is not None and platform.machine().lower() in ("x86_64", "amd64")


def cpuinfo(field: str) -> str:
    """A field of the first CPU in /proc/cpuinfo ("vendor_id", "model name", "flags"); "" where there is none.
    Keys match whole ("model" is not "model name")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                break  # the first CPU's block ends at a blank line
            if key.strip() == field:
                return value.strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    return cpuinfo("vendor_id")


def parse(value: str | None) -> str:
    from peftbench.errors import UserError

    choice = (value or "auto").strip().lower()
    if choice not in CHOICES:
        raise UserError(f"--matmul {value!r} is not one of {', '.join(CHOICES)}; e.g. --matmul torch keeps torch's own "
                        "(MKL on x86), --matmul onednn takes oneDNN's")
    return choice


def resolve(choice: str | None = None) -> tuple[str, str]:
    """(backend, why) for `choice` (default: $PEFTBENCH_MATMUL, else auto)."""
    choice = parse(choice if choice is not None else os.environ.get(ENV))
    if choice == "torch":
        return "torch", "--matmul torch"
    if not available():
        return "torch", f"{choice}: no oneDNN linear in this torch build or CPU"
    if choice == "onednn":
        return "onednn", "--matmul onednn"
    vendor = cpu_vendor()
    if vendor and vendor != "GenuineIntel":
        return "onednn", f"auto: {vendor} CPU (MKL runs its generic code path there)"
    return "torch", f"auto: {vendor or 'unknown'} CPU"


class _Linear(torch.autograd.Function):
    """x @ w.T + b for a 2-D x through oneDNN, with its backward's two products through oneDNN too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _op()(x, w, b, "none", [], "")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _op()(grad, w.t(), None, "none", [], "")  # grad @ w
        if ctx.needs_input_grad[1]:
            dw = _op()(grad.t(), x.t(), None, "none", [], "")  # grad.T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.sum(0)
        return dx, dw, db


def onednn_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear (same signature) through oneDNN where it applies: plain fp32 CPU tensors, no autocast; else torch's."""
    x, w, b = input, weight, bias
    if (type(x) not in _PLAIN or type(w) not in _PLAIN or (b is not None and type(b) not in _PLAIN)
            or x.dtype != torch.float32 or w.dtype != torch.float32 or x.device.type != "cpu" or w.device.type != "cpu"
            or x.dim() < 2 or w.dim() != 2 or x.layout != torch.strided or w.layout != torch.strided
            or (b is not None and (b.dtype != torch.float32 or b.dim() != 1))
            or _autocast() or torch.compiler.is_compiling()):
        return _torch_linear(x, w, b)
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
        # 2-D in and out of the Function, the reshape outside: an output that is a view made inside a custom
        # Function may not be modified in place, and adapters (AdaLoRA, GraLoRA) add to it in place.
        out = _Linear.apply(x.reshape(-1, x.shape[-1]), w, b)
        return out.reshape(*x.shape[:-1], w.shape[0])
    return _op()(x, w, b, "none", [], "")


def _autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device
        return torch.is_autocast_cpu_enabled()


_state: dict[str, Any] = {"backend": "torch", "why": "not installed"}


def install(choice: str | None = None) -> dict[str, str]:
    """Put the chosen backend in place for this process (idempotent; F.linear is looked up at every call,
    so nn.Linear and peft's layers follow). Returns what is in place, for the run's record."""
    backend, why = resolve(choice)
    F.linear = onednn_linear if backend == "onednn" else _torch_linear
    _state.update(backend=backend, why=why)
    return current()


def ensure() -> dict[str, str]:
    """What is in place, installing the default ($PEFTBENCH_MATMUL, else auto) the first time: model
    loading and every run call this, so an explicit `install` earlier in the process stands."""
    return current() if _state["why"] != "not installed" else install()


def current() -> dict[str, str]:
    return {"backend": _state["backend"], "why": _state["why"]}


def uninstall() -> None:
    F.linear = _torch_linear
    _state.update(backend="torch", why="not installed")
