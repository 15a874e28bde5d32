"""Numeric precision of a run: train.precision (autocast, fp16's gradient scaler, TF32) and model.dtype.

- precision auto: bf16 on a CUDA device that supports it, else fp32 (always fp32 on CPU).
  bf16 also runs on CPU when asked (torch's CPU autocast); fp16 needs CUDA and is refused elsewhere.
- model.dtype auto: float32 on CPU; on CUDA the half type of the precision (bf16 -> bfloat16,
  fp16 -> float16) when the method keeps the base frozen, else float32 (full fine-tuning would
  otherwise round every weight it trains). A half base needs the matching precision: its
  fp32 trainable parts meet half activations only under autocast.
- Trainable parameters (adapters, heads) are kept in float32 whatever the base's dtype.
- fp32 on CUDA turns TF32 matmuls on (CUDA only: CPU numbers never change).

Resolved values are written into the config by runner.normalize, so the store records and hashes
what a run really used; fp32/float32 are left out of the hash (RunConfig.canonical), as before.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from peftbench.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HALF = {"bf16": "bfloat16", "fp16": "float16"}  # precision -> the base dtype it pairs with
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
FINITE_EVERY_CUDA = 16  # steps between divergence checks on CUDA (each one is read a period later)


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve(precision: str, dtype: str, device: torch.device, frozen_base: bool = True) -> tuple[str, str]:
    """(precision, dtype) with auto decided for `device`; refuses (UserError) what cannot run there."""
    if precision == "auto":
        precision = "bf16" if bf16_supported(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserError("train.precision fp16 needs a CUDA GPU (this run is on the CPU); use --precision bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not bf16_supported(device):
        raise UserError("this GPU does not support bf16; use --precision fp16 (or fp32)")
    if dtype == "auto":
        dtype = HALF.get(precision, "float32") if device.type == "cuda" and frozen_base else "float32"
    if dtype != "float32" and HALF.get(precision) != dtype:
        want = next(p for p, d in HALF.items() if d == dtype)
        raise UserError(f"model.dtype {dtype} needs train.precision {want} (got {precision}); "
                        f"use --precision {want} or --dtype float32")
    return precision, dtype


def as_stored(cfg: Any, full: bool = False) -> Any:
    """A stored run's config with the precision and dtype it ran at: the store leaves fp32 and float32
    out (so that auto on another machine cannot stand for them). full: float32 and fp32 whatever it ran at."""
    if full or "precision" not in cfg.train.model_fields_set:
        cfg.train.precision = "fp32"
    if full or "dtype" not in cfg.model.model_fields_set:
        cfg.model.dtype = "float32"
    return cfg


def load_kwargs(dtype: str) -> dict[str, Any]:
    """from_pretrained's dtype for a resolved model.dtype (explicit, so a half checkpoint still loads as asked)."""
    return {"dtype": DTYPES[dtype]} if dtype in DTYPES else {}


def upcast_trainable(model: nn.Module) -> nn.Module:
    """Trainable parameters in float32 (in place: the Parameter objects stay the same), after a method is applied."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def autocast(precision: str, device_type: str) -> AbstractContextManager[Any]:
    """The forward's autocast for a resolved precision; nothing for fp32."""
    if precision not in AUTOCAST:
        return nullcontext()
    return torch.autocast(device_type, dtype=AUTOCAST[precision])


def enable_tf32(precision: str, device: torch.device) -> None:
    """TF32 matmuls (and cuDNN convolutions) for an fp32 run on CUDA; the CPU's settings are never touched.

    allow_tf32, not set_float32_matmul_precision (which also switches oneDNN's CPU matmuls) nor
    matmul.fp32_precision (after which torch.get_float32_matmul_precision() raises in torch 2.13)."""
    if device.type == "cuda" and precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def tf32_enabled() -> bool:
    return bool(torch.backends.cuda.matmul.allow_tf32)


class Amp:
    """Mixed precision in the step loop: autocast for the forward, and fp16's gradient scaler
    (loss scaled for backward, gradients unscaled before clipping, steps with inf/nan gradients skipped)."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.precision, self.device_type = precision, device.type
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.precision, self.device_type)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before clipping, so the norm is the true gradients'."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)  # skipped when the gradients hold inf/nan (fused AdamW: without a sync)
            self.scaler.update()
        else:
            optimizer.step()

    def state(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler else None

    def load_state(self, state: dict[str, Any] | None) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)


class FiniteWatch:
    """Has the training loss become inf/nan? On the CPU, checked every step (reading it costs nothing).

    On CUDA a check would wait for the GPU, so every 16 steps the flag is copied to the host
    without waiting and read at the next check, when the copy has long finished: divergence is
    caught at most 32 steps late, and the loop never syncs."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.every = FINITE_EVERY_CUDA if self.cuda else 1
        self.pending: tuple[torch.Tensor, Any] | None = None

    def diverged(self, step: int, loss_sum: torch.Tensor) -> bool:
        if step % self.every:
            return False
        if not self.cuda:
            return not torch.isfinite(loss_sum)
        bad = False
        if self.pending is not None and self.pending[1].query():  # the earlier copy is done: read it free
            bad = not bool(self.pending[0])
        flag = torch.isfinite(loss_sum).to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending = (flag, event)
        return bad
