"""Measured FLOPs with torch's FlopCounterMode, cached per padded batch shape.

Counting a step costs ~0.05 s extra (10-30% of a step here), so each distinct input shape is counted
once (on a real step) and its figure reused. Forward and backward are kept apart:
frozen weights need no weight gradient, so a LoRA backward is ~1x its forward while a
full fine-tuning backward is ~2x. Training and evaluation use separate meters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

Shape = tuple[tuple[str, tuple[int, ...]], ...]


def _register_cpu_sdpa() -> None:
    """Count CPU fused attention, which FlopCounterMode (torch 2.13) has no formula for.

    With dropout off (evaluation, or models without attention dropout) CPU SDPA runs
    _scaled_dot_product_flash_attention_for_cpu instead of bmm, and its FLOPs would count as 0.
    """
    aten = torch.ops.aten
    pairs = [
        ("_scaled_dot_product_flash_attention_for_cpu", flop_counter.sdpa_flop),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", flop_counter.sdpa_backward_flop),
    ]
    for name, formula in pairs:
        op = getattr(aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op, get_raw=True)(formula)  # formula takes shapes already


_register_cpu_sdpa()


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: every FLOP goes to "Global" only."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def counter() -> FlopCounterMode:
    """torch's FlopCounterMode, totals only.

    Its per-module breakdown hooks every module and was most of the counting cost
    (+0.11 s against +0.05 s per counted MiniLM step); peftbench only reads the total.
    """
    fc = FlopCounterMode(display=False)
    fc.mod_tracker = _GlobalOnly()
    return fc


def shape_key(batch: dict[str, torch.Tensor]) -> Shape:
    return tuple(sorted((k, tuple(v.shape)) for k, v in batch.items() if isinstance(v, torch.Tensor)))


@dataclass
class FlopMeter:
    enabled: bool = True
    forward_flops: int = 0
    backward_flops: int = 0
    counted_shapes: int = 0
    counting_seconds: float = 0.0  # wall time of the counted (instrumented) passes
    cache: dict[Shape, tuple[int, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.forward_flops + self.backward_flops

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """A forward pass whose FLOPs are added (evaluation: no backward)."""
        key = shape_key(batch)
        if not self.enabled or key in self.cache:
            out = model(**batch)
            if self.enabled:
                self.forward_flops += self.cache[key][0]
            return out
        t0 = time.perf_counter()
        with counter() as fc:
            out = model(**batch)
        self.cache[key] = (fc.get_total_flops(), 0)
        self.counted_shapes += 1
        self.counting_seconds += time.perf_counter() - t0
        self.forward_flops += self.cache[key][0]
        return out

    def generate(self, model: nn.Module, batch: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        """model.generate with its FLOPs added; counted on every call, since each step's shapes differ."""
        if not self.enabled:
            return model.generate(**batch, **kwargs)
        t0 = time.perf_counter()
        with counter() as fc:
            out = model.generate(**batch, **kwargs)
        self.forward_flops += fc.get_total_flops()
        self.counting_seconds += time.perf_counter() - t0
        return out

    def train_step(self, model: nn.Module, batch: dict[str, torch.Tensor], scale: float = 1.0) -> torch.Tensor:
        """Forward + backward of one micro-batch; returns the (unscaled) loss, detached."""
        key = shape_key(batch)
        if not self.enabled or key in self.cache:
            loss = model(**batch).loss
            (loss * scale if scale != 1.0 else loss).backward()
            if self.enabled:
                fwd, bwd = self.cache[key]
                self.forward_flops += fwd
                self.backward_flops += bwd
            return loss.detach()
        t0 = time.perf_counter()
        with counter() as fc:
            loss = model(**batch).loss
        with counter() as bc:
            (loss * scale if scale != 1.0 else loss).backward()
        self.cache[key] = (fc.get_total_flops(), bc.get_total_flops())
        self.counted_shapes += 1
        self.counting_seconds += time.perf_counter() - t0
        self.forward_flops += self.cache[key][0]
        self.backward_flops += self.cache[key][1]
        return loss.detach()
