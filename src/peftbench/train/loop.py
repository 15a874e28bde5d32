"""The training loop: one screen, measured as it runs.

Budget in optimizer steps; validation every `eval_every` steps gives the learning curve;
the best validation point's trainable weights are restored at the end. The test split
is not touched here: the caller scores it once, on the selected weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from peftbench.config import TrainSpec
from peftbench.measure.flops import FlopMeter
from peftbench.methods.base import Method
from peftbench.tasks.base import Task
from peftbench.train import optim


class Reporter(Protocol):
    def start(self, total_steps: int) -> None: ...
    def step(self, step: int, loss: float | None) -> None: ...
    def evaluating(self, split: str, done: int, total: int) -> None: ...
    def evaluated(self, point: EvalPoint) -> None: ...


class Quiet:
    def start(self, total_steps: int) -> None: ...
    def step(self, step: int, loss: float | None) -> None: ...
    def evaluating(self, split: str, done: int, total: int) -> None: ...
    def evaluated(self, point: EvalPoint) -> None: ...


@dataclass
class EvalPoint:
    step: int
    tokens: int
    train_flops: int
    seconds: float  # training seconds so far (evaluation time excluded)
    train_loss: float | None
    metrics: dict[str, float]


@dataclass
class TrainOutcome:
    steps: int
    tokens: int
    train_seconds: float
    eval_seconds: float
    best_step: int
    curve: list[EvalPoint] = field(default_factory=list)

    def curve_dicts(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.curve]


def budget_steps(spec: TrainSpec, train_size: int) -> int:
    if spec.steps is not None:
        return spec.steps
    per_epoch = math.ceil(train_size / (spec.batch_size * spec.grad_accum))
    return max(1, math.ceil(spec.epochs * per_epoch))


def better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric == "loss" else new > old


def train(
    model: nn.Module, method: Method, task: Task, spec: TrainSpec, lr: float, total_steps: int,
    device: torch.device, meter: FlopMeter, eval_meter: FlopMeter, reporter: Reporter = Quiet(),
) -> TrainOutcome:
    def validate(step: int, train_loss: float | None) -> EvalPoint:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        res = task.evaluate(model, "validation", spec.eval_batch_size, eval_meter,
                            lambda done, total: reporter.evaluating("validation", done, total))
        eval_seconds += time.perf_counter() - t0
        point = EvalPoint(step, tokens, meter.total, train_seconds, train_loss, res.metrics)
        reporter.evaluated(point)
        return point

    tokens, train_seconds, eval_seconds = 0, 0.0, 0.0
    if not method.trains:
        point = validate(0, None)
        return TrainOutcome(0, 0, 0.0, eval_seconds, 0, [point])

    params = [p for p in model.parameters() if p.requires_grad]
    select = spec.select_metric or task.select_metric
    optimizer, scheduler = optim.build(model, spec, lr, total_steps)
    eval_every = spec.eval_every or math.ceil(total_steps / 4)  # 4 points, the last at the end
    batches = task.train_batches(spec.batch_size, spec.seed)
    curve: list[EvalPoint] = []
    best: tuple[int, float | None, dict[str, torch.Tensor] | None] = (0, None, None)
    loss_sum, loss_n = torch.zeros(()), 0
    model.train()
    reporter.start(total_steps)
    t_start = time.perf_counter()
    for step in range(1, total_steps + 1):
        for _ in range(spec.grad_accum):
            batch = next(batches)
            tokens += task.batch_tokens(batch)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss_sum += meter.train_step(model, batch, 1.0 / spec.grad_accum).float().cpu()
            loss_n += 1
        if spec.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
        optimizer.step()
        scheduler.step()
        method.on_step(model, step)
        optimizer.zero_grad(set_to_none=True)
        reporter.step(step, None)
        if step % eval_every == 0 or step == total_steps:
            train_seconds += time.perf_counter() - t_start
            point = validate(step, float(loss_sum) / loss_n)
            curve.append(point)
            loss_sum, loss_n = torch.zeros(()), 0
            score = point.metrics[select]
            if better(select, score, best[1]):
                state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                best = (step, score, state)
            t_start = time.perf_counter()
    if best[2] is not None:  # restore the validation-selected weights
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, v in best[2].items():
                named[n].copy_(v)
    return TrainOutcome(total_steps, tokens, train_seconds, eval_seconds, best[0], curve)
