"""The training loop: one screen, the step written out (as nanoGPT's train.py writes it).

Each optimizer step runs forward, loss and backward per micro-batch, clips, steps the optimizer,
then measures once: FLOPs (counted around forward + backward), tokens, time and budget progress.
The loss stays on the device and is read only when validating, so no step waits for the GPU.
The forward runs under the run's autocast, with fp16's gradient scaler (train/precision.py).

Budget in optimizer steps, measured training FLOPs or seconds; validation every `eval_every` steps gives the learning curve;
the best validation point's trainable weights are restored at the end. The test split
is not touched here: the caller scores it once, on the selected weights. A checkpoint now and then
(train/checkpoint.py) lets a killed run resume where it was, to exactly the same result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from peftbench.config import TrainSpec
from peftbench.errors import UserError
from peftbench.measure.flops import FlopMeter
from peftbench.measure.phases import phase
from peftbench.methods.base import Method
from peftbench.metrics import lower_is_better
from peftbench.tasks.base import Task
from peftbench.train import lm_loss, optim, parallel, precision
from peftbench.train.budget import Budget, EvalSchedule, Stopwatch, TokenCount, device_sync
from peftbench.train.checkpoint import Checkpoints, Parts


class Reporter(Protocol):
    def start(self, total_steps: int) -> None: ...
    def step(self, step: int) -> None: ...
    def evaluating(self, split: str, done: int, total: int) -> None: ...
    def evaluated(self, point: EvalPoint) -> None: ...


class Quiet:
    def start(self, total_steps: int) -> None: ...
    def step(self, step: int) -> None: ...
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


@dataclass
class State:
    """Where training stands after a step; a checkpoint saves it with the model, optimizer and meters."""

    loss_sum: torch.Tensor  # on the device: read only when validating
    loss_n: int = 0
    step: int = 0
    progress: float = 0.0  # share of the budget spent, measured after each update
    curve: list[EvalPoint] = field(default_factory=list)
    best_step: int = 0
    best_score: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    scaler: dict[str, Any] | None = None  # fp16's gradient scaler, as of the last checkpoint


def better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if lower_is_better(metric) else new > old


def diverged(mean_loss: torch.Tensor, step: int, lr: float) -> UserError:
    return UserError(f"loss became {float(mean_loss)} at step {step} (learning rate {lr:g}): lower the learning rate (--lr)")


def train(
    model: nn.Module, method: Method, task: Task, spec: TrainSpec, lr: float, budget: Budget,
    device: torch.device, meter: FlopMeter, eval_meter: FlopMeter, reporter: Reporter = Quiet(),
    checkpoints: Checkpoints | None = None,
) -> TrainOutcome:
    """Train to the budget, validating along the way; the best validation point's weights are kept.

    checkpoints: where to save the run's state now and then, and resume from if a saved one exists."""
    sync = device_sync(device)
    clock, eval_clock = Stopwatch(sync), Stopwatch(sync)  # training seconds (validation excluded); validation seconds

    def validate(step: int, tokens: int, train_loss: float | None) -> EvalPoint:
        with eval_clock.running(), phase("validate"):
            res = task.evaluate(model, "validation", spec.eval_batch_size, eval_meter,
                                lambda done, total: reporter.evaluating("validation", done, total))
        point = EvalPoint(step, int(parallel.total(tokens)), int(parallel.total(meter.total)), clock.seconds,
                          train_loss, res.metrics)
        reporter.evaluated(point)
        return point

    if not method.trains:
        if method.fits:  # a closed-form fit (linear_probe): its forward passes are its training time and FLOPs
            with clock.running(), phase("fit"):
                method.fit(model, task, spec.select_metric or task.select_metric, spec.eval_batch_size, meter)
        point = validate(0, 0, None)
        return TrainOutcome(0, 0, clock.seconds, eval_clock.seconds, 0, [point])

    params = [p for p in model.parameters() if p.requires_grad]
    select = spec.select_metric or task.select_metric
    s = State(loss_sum=torch.zeros((), device=device))
    optimizer, scheduler = optim.build(model, spec, lr, budget.steps, lambda: s.progress, task.head_modules, method)
    evals = EvalSchedule.of(spec.eval_every, budget)
    batches = TokenCount(parallel.shard(task.train_batches(spec.batch_size, spec.seed)), task.batch_tokens)
    train_model = parallel.wrap(model)  # DDP across processes under accelerate launch / torchrun
    scale = 1.0 / spec.grad_accum  # the step's gradient is the mean of its micro-batches'
    amp, watch = precision.Amp(spec.precision, device), precision.FiniteWatch(device)  # autocast, fp16's scaler
    parts = Parts(model, method, optimizer, scheduler, (meter, eval_meter), (clock, eval_clock), batches, evals, spec.grad_accum)
    if checkpoints:
        checkpoints.resume(parts, s)
        amp.load_state(s.scaler)
    model.train()
    reporter.start(budget.steps or 0)
    clock.start()
    while s.progress < 1.0:
        s.step += 1
        for _ in range(spec.grad_accum):
            for piece, share in task.pieces(next(batches), spec.batch_size):  # one, but a question's choices
                batch = {k: v.to(device, non_blocking=True) for k, v in piece.items()}
                with meter.count(batch):  # FLOPs of this forward + backward (measured once per batch shape)
                    with amp.autocast():
                        loss = lm_loss.loss(train_model, batch)  # an LM's cross-entropy in chunks of positions
                    amp.backward(loss * (scale * share))
                s.loss_sum += loss.detach().float() * share
            s.loss_n += 1
        if watch.diverged(s.step, s.loss_sum):  # diverged: nothing after this is a result
            raise diverged(s.loss_sum / s.loss_n, s.step, lr)
        if spec.max_grad_norm:
            amp.unscale(optimizer)
            torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
        amp.step(optimizer)
        method.on_step(model, s.step)  # e.g. AdaLoRA's rank allocation, which reads this step's gradients
        optimizer.zero_grad(set_to_none=True)

        # Measurement: FLOPs were counted around forward + backward, tokens as batches were drawn;
        # the budget's share spent follows from them and the training clock.
        s.progress = budget.progress(s.step, meter.total, clock.seconds)
        scheduler.step()  # after `progress`, which a FLOPs or seconds budget's schedule follows
        reporter.step(s.step)
        if evals.due(s.step, s.progress):
            with clock.stopped():
                if not torch.isfinite(s.loss_sum):
                    raise diverged(s.loss_sum / s.loss_n, s.step, lr)
                point = validate(s.step, batches.tokens, s.loss_sum.item() / s.loss_n)
                s.curve.append(point)
                s.loss_sum.zero_()
                s.loss_n = 0
                score = point.metrics[select]
                if better(select, score, s.best_score):
                    s.best_step, s.best_score = s.step, score
                    s.best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if checkpoints and checkpoints.due(s.step, clock.seconds, s.progress):
            with clock.stopped():  # writing is not training time
                s.scaler = amp.state()
                checkpoints.save(parts, s)
    clock.stop()

    tokens = batches.tokens
    if parallel.world_size() > 1:  # the run's measures are all processes' together
        meter.forward_flops, meter.backward_flops, meter.recompute_flops = (
            int(parallel.total(v)) for v in (meter.forward_flops, meter.backward_flops, meter.recompute_flops))
        tokens = int(parallel.total(tokens))
    if s.best_state is not None:  # restore the validation-selected weights
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, v in s.best_state.items():
                named[n].copy_(v)
    return TrainOutcome(s.step, tokens, clock.seconds, eval_clock.seconds, s.best_step, s.curve)
