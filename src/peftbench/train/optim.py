"""AdamW with linear warm-up and decay; no weight decay on biases and norms."""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from peftbench.config import TrainSpec


def build(model: nn.Module, spec: TrainSpec, lr: float, total_steps: int):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
    warmup = int(spec.warmup_ratio * total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    return optimizer, scheduler
