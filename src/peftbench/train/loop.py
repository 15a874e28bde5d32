"""The training loop: one screen, measured as it runs.

Budget in optimizer steps, measured training FLOPs or seconds; validation every `eval_every` steps gives the learning curve;
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
from peftbench.metrics import lower_is_better
from peftbench.tasks.base import Task
from peftbench.train import optim, parallel


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
    """Where training stands against its budget: steps, measured FLOPs or training seconds.

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
        spent = {"steps": step, "flops": flops, "seconds": seconds}[self.kind]
        return spent / self.limit

    @property
    def steps(self) -> int | None:
        return int(self.limit) if self.kind == "steps" else None


def better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if lower_is_better(metric) else new > old


def train(
    model: nn.Module, method: Method, task: Task, spec: TrainSpec, lr: float, budget: Budget | int,
    device: torch.device, meter: FlopMeter, eval_meter: FlopMeter, reporter: Reporter = Quiet(),
) -> TrainOutcome:
    """Train to the budget (an int is a number of steps), validating along the way."""
    if isinstance(budget, int):
        budget = Budget("steps", budget)
    def validate(step: int, train_loss: float | None) -> EvalPoint:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        res = task.evaluate(model, "validation", spec.eval_batch_size, eval_meter,
                            lambda done, total: reporter.evaluating("validation", done, total))
        eval_seconds += time.perf_counter() - t0
        point = EvalPoint(step, int(parallel.total(tokens)), int(parallel.total(meter.total)), train_seconds,
                          train_loss, res.metrics)
        reporter.evaluated(point)
        return point

    tokens, train_seconds, eval_seconds = 0, 0.0, 0.0
    if not method.trains:
        point = validate(0, None)
        return TrainOutcome(0, 0, 0.0, eval_seconds, 0, [point])

    params = [p for p in model.parameters() if p.requires_grad]
    select = spec.select_metric or task.select_metric
    optimizer, scheduler = optim.build(model, spec, lr, budget.steps)
    # Evaluate every eval_every steps if set, else at 1/4, 2/4, 3/4 of the budget and at its end.
    eval_every = spec.eval_every or (math.ceil(budget.steps / 4) if budget.steps else None)
    next_quarter = 0.25
    batches = parallel.shard(task.train_batches(spec.batch_size, spec.seed))
    train_model = parallel.wrap(model)  # DDP across processes under accelerate launch / torchrun
    curve: list[EvalPoint] = []
    best: tuple[int, float | None, dict[str, torch.Tensor] | None] = (0, None, None)
    loss_sum, loss_n = torch.zeros(()), 0
    model.train()
    reporter.start(budget.steps or 0)
    t_start = time.perf_counter()
    step, done = 0, False
    while not done:
        step += 1
        for _ in range(spec.grad_accum):
            batch = next(batches)
            tokens += task.batch_tokens(batch)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss_sum += meter.train_step(train_model, batch, 1.0 / spec.grad_accum).float().cpu()
            loss_n += 1
        if spec.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
        optimizer.step()
        flops = meter.total if budget.kind != "flops" else parallel.total(meter.total)  # all processes' FLOPs
        seconds = train_seconds + time.perf_counter() - t_start
        progress = budget.progress(step, int(flops), parallel.total(seconds, "max") if budget.kind == "seconds" else seconds)
        done = progress >= 1.0
        if isinstance(scheduler, optim.ProgressSchedule):
            scheduler.progress = progress
        scheduler.step()
        method.on_step(model, step)
        optimizer.zero_grad(set_to_none=True)
        reporter.step(step, None)
        due = step % eval_every == 0 if eval_every else progress >= next_quarter
        if due or done:
            while progress >= next_quarter:
                next_quarter += 0.25
            train_seconds += time.perf_counter() - t_start
            point = validate(step, float(loss_sum) / loss_n)
            curve.append(point)
            loss_sum, loss_n = torch.zeros(()), 0
            score = point.metrics[select]
            if better(select, score, best[1]):
                state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                best = (step, score, state)
            t_start = time.perf_counter()
    if parallel.world_size() > 1:  # the run's measures are all processes' together
        meter.forward_flops, meter.backward_flops = (int(parallel.total(v)) for v in (meter.forward_flops, meter.backward_flops))
        tokens = int(parallel.total(tokens))
    if best[2] is not None:  # restore the validation-selected weights
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, v in best[2].items():
                named[n].copy_(v)
    return TrainOutcome(step, tokens, train_seconds, eval_seconds, best[0], curve)
