"""Inference latency and throughput: what a user of the tuned model pays per request.

Timed is the task's own prediction path (evaluate with score=False): tokenizing, the forward
pass, generation with the run's decoding or label scoring, but no teacher-forced loss and no
metrics, which a request does not pay. One warm-up, then the median of `latency_repeats`.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import nn

from peftbench.config import MeasureSpec
from peftbench.methods.base import Method
from peftbench.tasks.base import Task


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(task: Task, model: nn.Module, n: int, device: torch.device, repeats: int) -> tuple[float, list[Any]]:
    """Median milliseconds to predict the test split's first n examples as one batch, and the predictions."""
    # Multiple choice batches count sequences, one per choice: n questions are n x choices sequences.
    per_example = getattr(task, "num_choices", 1)

    def once() -> tuple[float, list[Any]]:
        _sync(device)
        t0 = time.perf_counter()
        preds = task.evaluate(model, "test", n * per_example, limit=n, score=False).predictions
        _sync(device)
        return time.perf_counter() - t0, preds

    _, preds = once()  # warm-up: kernels, allocator, cached tokenization
    return statistics.median(once()[0] for _ in range(repeats)) * 1000, preds


def _figures(task: Task, model: nn.Module, n: int, device: torch.device, spec: MeasureSpec) -> tuple[dict[str, Any], list[Any]]:
    b1, _ = _timed(task, model, 1, device, spec.latency_repeats)
    bn, preds = _timed(task, model, n, device, spec.latency_repeats)
    return {"b1_ms": b1, "bN_ms": bn, "batch": n, "throughput": n / (bn / 1000)}, preds


def measure(task: Task, model: nn.Module, method: Method, device: torch.device, spec: MeasureSpec) -> dict[str, Any]:
    """Latency at batch 1 and at batch N (spec.latency_batch, at most the test split), and throughput
    at N; for methods that can merge, the same of the merged model (a copy: `model` is untouched)."""
    n = max(1, min(spec.latency_batch, task.split_size("test")))
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
