"""Inference latency and throughput: what a user of the tuned model pays per request.

Timed is the task's own prediction path (evaluate with score=False): tokenizing, the forward
pass, generation with the run's decoding or label scoring, but no teacher-forced loss and no
metrics, which a request does not pay. One warm-up, then timed repeats until the median's
distribution-free 95% interval lies within +-5% of it (at least `latency_repeats`, at most
`latency_max_repeats`, and no more than 3 once the series has taken `latency_seconds`: slow
generation would otherwise spend a third of a run here); the stored figures say how many ran,
why the series stopped (interval, cap or time) and whether the interval got there,
the repeats' interquartile range, and how loaded the machine was while timing (a busy shared CPU
made batch-1 latency of one backbone range 45 ms to 1 s: the spread and the note say so).
Generation tasks time a few prompts at batch N (GENERATION_BATCH), not a batch of 32 generations.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftbench.config import MeasureSpec
from peftbench.methods.base import Method
from peftbench.stats.intervals import median_interval
from peftbench.tasks.base import Task
from peftbench.train.threads import LoadWindow

TARGET = 0.05  # the median's 95% interval within +-5% of it
TIME_FLOOR = 3  # repeats a series keeps once its time is up: a median needs three
GENERATION_BATCH = 4  # prompts at batch N for tasks that generate: a request's cost, not an evaluation pass's
clock: Callable[[], float] = time.perf_counter  # tests put a fake clock here


@dataclass
class Timing:
    median: float
    repeats: int
    met: bool  # the interval got within TARGET before the cap
    quartiles: tuple[float, float] = (0.0, 0.0)  # first and third
    stopped: str = "interval"  # why the repeats ended: "interval" (met), "cap" (max repeats) or "time"


def quartiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], samples[0]
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, q3


def stable(samples: list[float], target: float = TARGET) -> bool:
    interval = median_interval(samples)
    if interval is None:
        return False
    mid = statistics.median(samples)
    return mid - interval[0] <= target * mid and interval[1] - mid <= target * mid


def repeat_until_stable(once: Callable[[], float], least: int, most: int, seconds: float = float("inf")) -> Timing:
    """Call `once` (it returns milliseconds) until the median is stable, at least `least` times, at most
    max(least, most); once the calls add up to `seconds`, stop as soon as there are min(least, TIME_FLOOR)."""
    samples: list[float] = []
    stopped = "cap"
    while len(samples) < max(least, most):
        samples.append(once())
        if len(samples) >= least and stable(samples):
            stopped = "interval"
            break
        if sum(samples) >= seconds * 1000 and len(samples) >= min(least, TIME_FLOOR):
            stopped = "time"
            break
    return Timing(statistics.median(samples), len(samples), stable(samples), quartiles(samples), stopped)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(task: Task, model: nn.Module, n: int, device: torch.device, spec: MeasureSpec) -> tuple[Timing, list[Any]]:
    """Median milliseconds to predict the test split's first n examples as one batch, and the predictions."""
    # Multiple choice batches count sequences, one per choice: n questions are n x choices sequences.
    per_example = getattr(task, "num_choices", 1)
    preds: list[Any] = []

    def once() -> float:
        nonlocal preds
        _sync(device)
        t0 = clock()
        preds = task.evaluate(model, "test", n * per_example, limit=n, score=False).predictions
        _sync(device)
        return (clock() - t0) * 1000

    once()  # warm-up: kernels, allocator, cached tokenization
    return repeat_until_stable(once, spec.latency_repeats, spec.latency_max_repeats, spec.latency_seconds), preds


def _figures(task: Task, model: nn.Module, n: int, device: torch.device, spec: MeasureSpec) -> tuple[dict[str, Any], list[Any]]:
    b1, _ = _timed(task, model, 1, device, spec)
    bn, preds = _timed(task, model, n, device, spec)
    return {"b1_ms": b1.median, "bN_ms": bn.median, "batch": n, "throughput": n / (bn.median / 1000),
            "repeats": {"b1": b1.repeats, "bN": bn.repeats}, "interval_met": {"b1": b1.met, "bN": bn.met},
            "stopped": {"b1": b1.stopped, "bN": bn.stopped},
            "iqr_ms": {"b1": list(b1.quartiles), "bN": list(bn.quartiles)}}, preds


def batch_size(task: Task, spec: MeasureSpec) -> int:
    """N: spec.latency_batch, at most the test split, and at most GENERATION_BATCH prompts for generation."""
    from peftbench.tasks.generation import GenerationTask

    cap = GENERATION_BATCH if isinstance(task, GenerationTask) else spec.latency_batch
    return max(1, min(spec.latency_batch, cap, task.split_size("test")))


def measure(task: Task, model: nn.Module, method: Method, device: torch.device, spec: MeasureSpec) -> dict[str, Any]:
    """Latency at batch 1 and at batch N (batch_size), and throughput at N; for methods that can merge,
    the same of the merged model (a copy: `model` is untouched)."""
    window = LoadWindow()
    out = _measure(task, model, method, device, spec)
    if device.type == "cpu":  # a GPU's latency hardly waits for the CPU's other work
        out["machine"] = window.machine(torch.get_num_threads())
    return out


def _measure(task: Task, model: nn.Module, method: Method, device: torch.device, spec: MeasureSpec) -> dict[str, Any]:
    n = batch_size(task, spec)
    out, preds = _figures(task, model, n, device, spec)
    if not method.can_merge:
        return out
    if type(method).merge is Method.merge:  # plain already (base, full, bitfit): merging changes nothing
        out["merged"] = {**out, "merged_matches": True, "same_model": True}
        return out
    merged = method.merge(copy.deepcopy(model))  # merge_and_unload works in place: merge a copy
    figures, merged_preds = _figures(task, merged, n, device, spec)
    out["merged"] = {**figures, "merged_matches": merged_preds == preds}
    del merged
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out
