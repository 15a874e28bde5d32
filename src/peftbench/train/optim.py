"""Optimizers and their learning-rate schedules; no weight decay on biases and norms.

- adamw: torch AdamW, linear warm-up then linear decay to 0.
- adafactor: transformers' Adafactor with an explicit learning rate (no relative steps, no
  parameter scaling, no warm-up init), on the same linear schedule as AdamW.
- prodigy: Prodigy (Mishchenko & Defazio 2023), which estimates the step size itself. Its
  `lr` is a multiplier on that estimate, normally 1.0: a method's default learning rate
  (tuned for AdamW, e.g. 2e-3) would make it crawl, so the runner should use
  `default_lr("prodigy", method.default_lr)` (= 1.0) unless the user set train.lr. As the
  Prodigy README recommends, the schedule is cosine annealing (here after the same linear
  warm-up), and with a warm-up the step-size estimate is safeguarded (safeguard_warmup=True).
  Bias correction stays off: the README suggests it (with the safeguard) for diffusion
  models only, and the two together keep the estimate at its initial d0=1e-6 for the first
  ~100-200 steps (measured on a small MLP and on LoRA over a small BERT), i.e. nothing
  trains in a short fine-tuning budget. Either one alone adapts within ~20 steps.

In every case parameters with fewer than 2 dimensions (biases, norm scales) get no weight
decay; matrices and embeddings get train.weight_decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from peftbench.config import TrainSpec
from peftbench.errors import UserError

OPTIMIZERS = ("adamw", "adafactor", "prodigy")
PRODIGY_INSTALL = "pip install 'prodigyopt>=1.0'"


def default_lr(optimizer: str, method_lr: float) -> float:
    """The learning rate to use when the user set none: Prodigy's multiplier 1.0, else the method's."""
    return 1.0 if optimizer == "prodigy" else method_lr


def require(optimizer: str) -> None:
    """Refuse (UserError) an optimizer whose package is missing; cheap, call it before any run starts."""
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{optimizer}'; known: {', '.join(OPTIMIZERS)}")
    if optimizer == "prodigy":
        try:
            import prodigyopt  # noqa: F401
        except ImportError:
            raise UserError(
                f"optimizer 'prodigy' needs the prodigyopt package, which is not installed; run: {PRODIGY_INSTALL}"
            ) from None


def param_groups(model: nn.Module, weight_decay: float, heads: Sequence[str] = (),
                 head_lr: float | None = None) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: decayed (ndim >= 2) and not (biases, norms); empty groups dropped.

    With a head_lr, the parameters of the new modules `heads` (named as in the unwrapped model; peft's
    wrappers add prefixes and modules_to_save copies) form two more groups at that rate."""
    decay, no_decay, head_decay, head_no_decay = [], [], [], []
    marks = tuple(f".{h}." for h in heads) if head_lr is not None else ()
    for name, p in model.named_parameters():
        if p.requires_grad:
            new = any(m in f".{name}" for m in marks)
            ((head_no_decay if new else no_decay) if p.ndim < 2 else (head_decay if new else decay)).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              {"params": head_decay, "weight_decay": weight_decay, "lr": head_lr},
              {"params": head_no_decay, "weight_decay": 0.0, "lr": head_lr}]
    return [g for g in groups if g["params"]]


def resolve_head_lr(spec: TrainSpec, method_head_lr: float | None) -> float | None:
    """The head's own rate, or None where it learns at train.lr (so equal rates hash as before).

    Not set: the method's default head rate (AdamW-style rates only: Prodigy's lr is a multiplier)."""
    rate = spec.head_lr
    if rate is None and spec.optimizer != "prodigy":
        rate = method_head_lr
    return None if rate is None or rate == spec.lr else float(rate)


def warmup_steps(spec: TrainSpec, total_steps: int) -> int:
    return int(spec.warmup_ratio * total_steps)


class ProgressSchedule(torch.optim.lr_scheduler.LambdaLR):
    """The same warm-up + linear (or cosine) shape, driven by the share of the budget spent.

    A FLOPs or seconds budget does not know its step count in advance; each `step()` reads
    `progress()` (0..1, as the loop measured it after the update) and the factor follows it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_ratio: float, cosine: bool,
                 progress: Callable[[], float]) -> None:
        self.progress, self.warmup_ratio, self.cosine = progress, warmup_ratio, cosine
        super().__init__(optimizer, lambda _step: self.factor(self.progress()))

    def factor(self, p: float) -> float:
        w = self.warmup_ratio
        if p < w:
            return p / w
        t = min(1.0, (p - w) / (1.0 - w))
        return 0.5 * (1.0 + math.cos(math.pi * t)) if self.cosine else 1.0 - t


def build(model: nn.Module, spec: TrainSpec, lr: float, total_steps: int | None,
          progress: Callable[[], float] | None = None,
          heads: Sequence[str] = (), method: Any = None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """(optimizer, scheduler) for spec.optimizer; the scheduler is stepped once per optimizer step.

    total_steps None (a FLOPs or seconds budget): a ProgressSchedule that follows `progress()`.
    heads: the task's new modules, which learn at spec.head_lr when it is set.
    method: a method that sets some parameters' rates (LoRA+) or brings its own optimizer (LoRA-FA).
    """
    require(spec.optimizer)
    groups = param_groups(model, spec.weight_decay, heads, spec.head_lr)
    if method is not None:
        groups = method.param_groups(model, groups, lr, tuple(f".{h}." for h in heads))
    warmup = warmup_steps(spec, total_steps) if total_steps is not None else 0
    own = method.optimizer(model, groups, lr, spec.weight_decay) if method is not None else None
    if own is not None:
        optimizer: torch.optim.Optimizer = own
    elif spec.optimizer == "adamw":
        # Fused on CUDA (one kernel, no host sync, and fp16's scaler steps it without one). Not on CPU: there it
        # steps full fine-tuning 6x faster but not bit-identically (benchmarks/cpu_fused_adamw.py), so stored
        # CPU results would change.
        fused = all(p.is_cuda and p.is_floating_point() for g in groups for p in g["params"])
        optimizer = torch.optim.AdamW(groups, lr=lr, **({"fused": True} if fused else {}))
    elif spec.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        optimizer = Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    else:  # prodigy
        from prodigyopt import Prodigy

        # weight_decay=0 here and per group above: Prodigy prints a line when its default is
        # non-zero, which would land in the CLI's (JSON) output. Decay stays decoupled (AdamW-like).
        optimizer = Prodigy(
            groups, lr=lr, weight_decay=0.0, decouple=True,
            safeguard_warmup=warmup > 0 if total_steps is not None else spec.warmup_ratio > 0, use_bias_correction=False,
        )
    cosine = spec.optimizer == "prodigy"
    if total_steps is None:
        if progress is None:
            raise ValueError("a budget without a step count needs `progress` for its schedule")
        return optimizer, ProgressSchedule(optimizer, spec.warmup_ratio, cosine, progress)
    if cosine:
        return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
