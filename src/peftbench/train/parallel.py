"""One run over several processes (GPUs) when started by `accelerate launch` or `torchrun`.

Every process trains a replica wrapped in DistributedDataParallel on its own share of the
batch stream (so a step sees world_size x batch_size examples), validates the same weights
(so all processes pick the same checkpoint), and the main process alone scores test and
writes the store. Single-process runs never import accelerate's state and are unchanged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@functools.cache
def accelerator() -> Any:
    """The process's Accelerator, or None when this is a plain single-process run."""
    if world_size() <= 1:
        return None
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # Some adapters leave trainable parameters out of a step's graph (e.g. a pooler a head skips).
    # cpu=True on a machine without CUDA: else accelerate ignores the launcher and every process is "main".
    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def is_main() -> bool:
    acc = accelerator()
    return acc is None or acc.is_main_process


def device() -> torch.device | None:
    acc = accelerator()
    return None if acc is None else acc.device


def wrap(model: nn.Module) -> nn.Module:
    """The model to train: DDP-wrapped across processes, else the model itself."""
    acc = accelerator()
    return model if acc is None else acc.prepare_model(model)


def shard(batches: Iterator[Any]) -> Iterator[Any]:
    """This process's share of one batch stream: batch i goes to process i mod world_size."""
    acc = accelerator()
    if acc is None:
        yield from batches
        return
    while True:
        group = [next(batches) for _ in range(acc.num_processes)]
        yield group[acc.process_index]


def total(value: float, op: str = "sum") -> float:
    """A number summed (or maxed) over processes; the value itself in a single process."""
    acc = accelerator()
    if acc is None:
        return value
    t = torch.tensor(float(value), dtype=torch.float64, device=acc.device)
    return float(acc.reduce(t, reduction="sum") if op == "sum" else acc.gather(t.reshape(1)).max())
