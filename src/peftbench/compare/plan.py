"""A study's plan, before the work: each method checked and measured once on this machine, then the
budget as steps and epochs per method and an estimated wall time.

The estimate is measured, not guessed: one training step of each method is counted (its FLOPs go to the
process's FLOP cache, so the run does not count them again) and timed, and a few validation examples
are timed (2 where the task generates). Steps follow from the budget and the step's FLOPs; time from
steps, validations and test.
It is rough: batch shapes vary, and a busy machine changes every timing.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

from peftbench.config import RunConfig
from peftbench.measure.flops import FlopMeter
from peftbench.measure.phases import phase


@dataclass
class Probe:
    """One method measured on this machine before a study."""

    label: str
    trains: bool
    step_flops: int  # model FLOPs of one optimizer step on the first training batch
    step_seconds: float  # that step, timed without counting
    eval_seconds: float  # per validation example, timed on a few
    sizes: dict[str, int]  # examples per split
    steps: int | None  # the config's own steps budget (steps or epochs), if it has one
    batch_examples: int  # examples per optimizer step
    messages: list[str] = field(default_factory=list)  # truncation, column matches: said once (runner.messages)


def probe(cfg: RunConfig, label: str) -> Probe:
    """Check the config as a run would (UserError if it cannot run), then time one step and a few evaluations."""
    from peftbench import reuse
    from peftbench.runner import messages, normalize, pick_device, prepare
    from peftbench.tasks.generation import GenerationTask
    from peftbench.train import lm_loss, precision
    from peftbench.train.budget import device_sync

    cfg, method = normalize(cfg)
    prep = prepare(cfg, method, samples=False)
    with phase("plan"):
        task, device = prep.task, pick_device()
        model = prep.model.to(device)
        sizes = {s: task.split_size(s) for s in ("train", "validation", "test")}
        flops, seconds = 0, 0.0
        if method.trains:
            first = next(task.train_batches(cfg.train.batch_size, cfg.train.seed))
            pieces = [{k: v.to(device) for k, v in b.items()} for b, _ in task.pieces(first, cfg.train.batch_size)]
            meter = FlopMeter(cache=reuse.flop_cache(cfg, "train"))
            model.train()
            for counted in (True, False):  # the counted pass also warms up; the second is timed
                t0 = time.perf_counter()
                for batch in pieces:  # as the loop runs a batch (a question's choices in several passes)
                    with meter.count(batch) if counted else contextlib.nullcontext():
                        with precision.autocast(cfg.train.precision, device.type):
                            loss = lm_loss.loss(model, batch)
                        loss.backward()
                device_sync(device)()
                seconds = time.perf_counter() - t0
                model.zero_grad(set_to_none=True)
            flops, seconds = meter.total * cfg.train.grad_accum, seconds * cfg.train.grad_accum
        # Generating costs seconds an example on a CPU (a 135M decoder: ~7 s): time 2, and skip the warm-up,
        # whose tokenizing of the split is small beside them; elsewhere 8, after a warm-up that tokenizes.
        generates = isinstance(task, GenerationTask)
        k = max(1, min(cfg.train.eval_batch_size, 2 if generates else 8, sizes["validation"]))
        if not generates:
            task.evaluate(model, "validation", cfg.train.eval_batch_size, limit=1)  # tokenizes the split: not timed
        t0 = time.perf_counter()
        task.evaluate(model, "validation", cfg.train.eval_batch_size, limit=k)
        per_example = (time.perf_counter() - t0) / k
    return Probe(label, method.trains, flops, seconds, per_example, sizes, prep.budget.steps if method.trains else None,
                 cfg.train.batch_size * cfg.train.grad_accum, messages(task))


@dataclass
class Estimate:
    label: str
    steps: int
    epochs: float
    seconds: float  # one run: training, validations and test
    runs: int  # how many runs of it the study makes (seeds, plus learning-rate search runs)
    work: float = 0.0  # ... in full-budget runs (a halving rung's run counts its share); 0: as many as runs

    @property
    def full_runs(self) -> float:
        return self.work or float(self.runs)


def estimate(p: Probe, budget: dict[str, Any], cfg: RunConfig, seeds: int, search_runs: int,
             search_work: float | None = None, refs: dict[str, Probe] | None = None) -> Estimate:
    """Steps under the study's budget, and one run's seconds: steps, validations, test (rough)."""
    ref = (refs or {}).get(budget.get("method", ""))
    if not p.trains:
        steps = 0
    elif budget.get("kind") == "flops" and ref and ref.steps and ref.step_flops and p.step_flops:
        steps = math.ceil(ref.steps * ref.step_flops / p.step_flops)  # the same first batch: FLOPs per step compare
    elif budget.get("kind") == "flops" and budget.get("value") and p.step_flops:
        steps = math.ceil(budget["value"] / p.step_flops)
    elif budget.get("kind") == "seconds" and p.step_seconds:
        steps = math.ceil(budget["value"] / p.step_seconds)
    else:
        steps = p.steps or 0
    points = 1 if not steps else (steps // cfg.train.eval_every if cfg.train.eval_every else 4) or 1
    seconds = steps * p.step_seconds + p.eval_seconds * (points * p.sizes["validation"] + p.sizes["test"])
    epochs = steps * p.batch_examples / max(p.sizes["train"], 1)
    work = seeds + (search_runs if search_work is None else search_work)
    return Estimate(p.label, steps, epochs, seconds, seeds + search_runs, work)


def lines(estimates: list[Estimate], budget_text: str) -> list[str]:
    """The plan as the study prints it: one line per method, then the whole."""
    out = [f"plan: {len(estimates)} methods, {budget_text}"]
    width = max(len(e.label) for e in estimates)
    for e in estimates:
        what = "nothing trains" if not e.steps else f"~{e.steps:,} steps ({e.epochs:.2g} epochs)"
        runs = f"{e.runs} runs x " if e.runs > 1 else ""
        out.append(f"  {e.label:<{width}}  {what:<28} {runs}~{duration(e.seconds)}")
    total = sum(e.seconds * e.full_runs for e in estimates)
    out.append(f"  estimated wall time ~{duration(total)} (from one measured step and a few validation examples "
               "per method on this machine; rough)")
    return out


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
