"""The training budget (optimizer steps, measured FLOPs or training seconds) and what a run spends.

The loop measures once per optimizer step, after the update: FLOPs counted around forward and
backward, tokens counted as batches are drawn, training seconds on a Stopwatch that stops while
validating; `Budget.progress` turns them into the share of the budget spent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from peftbench.config import TrainSpec
from peftbench.train import parallel


def device_sync(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA runs asynchronously); nothing to wait for elsewhere."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def budget_steps(spec: TrainSpec, train_size: int) -> int | None:
    """Optimizer steps of a steps or epochs budget; None for a FLOPs or seconds budget."""
    if spec.steps is not None:
        return spec.steps
    if spec.epochs is None:
        return None
    per_epoch = math.ceil(train_size / (spec.batch_size * spec.grad_accum))
    return max(1, math.ceil(spec.epochs * per_epoch))


@dataclass
class Budget:
    """A run's budget: steps, measured FLOPs or training seconds.

    Training stops after the step that reaches the budget, so a FLOPs or seconds run ends
    less than one step past it; the schedule and the 4 default evaluations follow `progress`.
    """

    kind: str  # "steps" (epochs are converted), "flops" or "seconds"
    limit: float

    @classmethod
    def of(cls, spec: TrainSpec, train_size: int) -> Budget:
        steps = budget_steps(spec, train_size)
        if steps is not None:
            return cls("steps", steps)
        kind, value = spec.budget
        return cls(kind, value)

    def progress(self, step: int, flops: int, seconds: float) -> float:
        """Share of the budget spent; over processes, FLOPs are summed and the slowest one's seconds count."""
        if self.kind == "steps":
            return step / self.limit
        if self.kind == "flops":
            return int(parallel.total(flops)) / self.limit
        return parallel.total(seconds, "max") / self.limit

    @property
    def steps(self) -> int | None:
        return int(self.limit) if self.kind == "steps" else None


@dataclass
class EvalSchedule:
    """When to validate: every `every` steps if set, else at each quarter of the budget; always at its end."""

    every: int | None
    next_quarter: float = 0.25

    @classmethod
    def of(cls, eval_every: int | None, budget: Budget) -> EvalSchedule:
        return cls(eval_every or (math.ceil(budget.steps / 4) if budget.steps else None))

    def due(self, step: int, progress: float) -> bool:
        if not (step % self.every == 0 if self.every else progress >= self.next_quarter) and progress < 1.0:
            return False
        while progress >= self.next_quarter:  # a step may pass several quarters: one point for them
            self.next_quarter += 0.25
        return True


class Stopwatch:
    """Seconds counted while running.

    `stop` first waits for the device (`sync`), so a stretch includes the work it queued. Reading
    `seconds` while running does not wait: the training loop reads it every step, and a GPU may
    still be finishing the last few queued steps (a seconds budget may stop that much late).
    """

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.sync, self.total = sync, 0.0
        self._since: float | None = None

    def start(self) -> None:
        self._since = time.perf_counter()

    def stop(self) -> None:
        self.sync()
        self.total = self.seconds
        self._since = None

    @property
    def seconds(self) -> float:
        return self.total + (time.perf_counter() - self._since if self._since is not None else 0.0)

    @contextmanager
    def running(self) -> Iterator[None]:
        self.start()
        yield
        self.stop()

    @contextmanager
    def stopped(self) -> Iterator[None]:
        self.stop()
        yield
        self.start()


class TokenCount:
    """A batch stream that counts the tokens of the batches drawn from it (this process's)."""

    def __init__(self, batches: Iterator[Any], tokens_of: Callable[[Any], int]) -> None:
        self.batches, self.tokens_of, self.tokens = batches, tokens_of, 0

    def __iter__(self) -> TokenCount:
        return self

    def __next__(self) -> Any:
        batch = next(self.batches)
        self.tokens += self.tokens_of(batch)  # on the host batch: no device sync
        return batch
