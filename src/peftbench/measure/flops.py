"""Measured FLOPs with torch's FlopCounterMode, cached per padded batch shape.

Counting a step costs ~0.05 s extra (10-30% of a step here), so each distinct input shape is counted
once (on a real step) and its figure reused. Forward and backward are kept apart:
frozen weights need no weight gradient, so a LoRA backward is ~1x its forward while a
full fine-tuning backward is ~2x. Training and evaluation use separate meters.

Gradient checkpointing reruns checkpointed layers' forward inside the backward pass. That
recomputation is counted apart (`recompute_flops`): model FLOPs (forward + backward) are the
same with checkpointing on or off and drive budgets and MFU; hardware FLOPs add the recomputation.

The training loop writes its own forward + backward inside `FlopMeter.count(batch)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from peftbench.measure.gen_flops import CallFigures
from peftbench.measure.gen_flops import generate as counted_generate
from peftbench.measure.phases import phase

Shape = tuple[tuple[str, tuple[int, ...]], ...]
LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def _register_cpu_sdpa() -> None:
    """Count CPU fused attention, which FlopCounterMode (torch 2.13) has no formula for.

    With dropout off (evaluation, or models without attention dropout) CPU SDPA runs
    _scaled_dot_product_flash_attention_for_cpu instead of bmm, and its FLOPs would count as 0.
    """
    aten = torch.ops.aten
    pairs = [
        ("_scaled_dot_product_flash_attention_for_cpu", flop_counter.sdpa_flop),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", flop_counter.sdpa_backward_flop),
    ]
    for name, formula in pairs:
        op = getattr(aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op, get_raw=True)(formula)  # formula takes shapes already


_register_cpu_sdpa()


def _register_onednn_linear() -> None:
    """Count oneDNN's linear (train/matmul.py routes fp32 CPU linears through it): x @ w.T, 2 FLOPs per
    multiply-add like torch's mm; the bias add, as in torch's addmm formula, is not counted."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or op in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _linear(x_shape: Any, w_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        rows = 1
        for d in x_shape[:-1]:
            rows *= d
        return 2 * rows * x_shape[-1] * w_shape[0]


_register_onednn_linear()


_recomputing = 0  # > 0 while torch.utils.checkpoint reruns a forward in the backward pass (any thread)


class _Recompute:
    def __enter__(self) -> None:
        global _recomputing
        _recomputing += 1

    def __exit__(self, *exc: object) -> None:
        global _recomputing
        _recomputing -= 1


def checkpoint_contexts() -> tuple[AbstractContextManager[None], AbstractContextManager[None]]:
    """torch.utils.checkpoint's context_fn (non-reentrant): the forward as it is, the recomputation marked."""
    return nullcontext(), _Recompute()


_FORCED_PHASE: list[str] = []


@contextmanager
def counted_as(phase: str) -> Iterator[None]:
    """FLOPs run inside count as `phase`: a chunked loss computes its backward's matmuls in the forward pass."""
    _FORCED_PHASE.append(phase)
    try:
        yield
    finally:
        _FORCED_PHASE.pop()


class _Phases:
    """Stands in for FlopCounterMode's ModuleTracker: every FLOP goes to "Global" and to its phase.

    The phase is "recompute" while a checkpointed forward reruns, "backward" while autograd runs
    a backward pass (torch's own ModuleTracker tests the same), else "forward"; so one counter
    around forward + backward keeps the three apart.
    """

    @property
    def parents(self) -> tuple[str, str]:
        if _recomputing:
            return ("Global", "recompute")
        if _FORCED_PHASE:
            return ("Global", _FORCED_PHASE[-1])
        return ("Global", "backward" if torch._C._current_graph_task_id() != -1 else "forward")

    def __enter__(self) -> _Phases:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def counter() -> FlopCounterMode:
    """torch's FlopCounterMode, totals only (overall, forward and backward).

    Its per-module breakdown hooks every module and was most of the counting cost
    (+0.11 s against +0.05 s per counted MiniLM step); peftbench only reads the totals.
    """
    fc = FlopCounterMode(display=False)
    fc.mod_tracker = _Phases()
    return fc


def phase_flops(fc: FlopCounterMode, phase: str) -> int:
    return sum(fc.get_flop_counts().get(phase, {}).values())


def shape_key(batch: dict[str, torch.Tensor]) -> Shape:
    return tuple(sorted((k, tuple(v.shape)) for k, v in batch.items() if isinstance(v, torch.Tensor)))


@dataclass
class FlopMeter:
    enabled: bool = True
    forward_flops: int = 0
    backward_flops: int = 0
    counted_shapes: int = 0
    counting_seconds: float = 0.0  # wall time of the counted (instrumented) passes
    cache: dict[Shape, tuple[int, ...]] = field(default_factory=dict)  # (forward, backward, recompute)
    recompute_flops: int = 0  # forward reruns of gradient checkpointing (in the backward pass)

    def __post_init__(self) -> None:
        # counted_shapes: distinct shapes this meter's FLOPs came from, counted here or found in a cache
        # an earlier run of the process filled (reuse.py); a plain attribute, so checkpoints skip it
        self._seen: set[Shape] = set()
        # generation's per-call figures (measure/gen_flops.py); not a field, so checkpoints do not carry it
        self.calls = CallFigures()

    @property
    def total(self) -> int:
        """Model FLOPs: forward + backward, no recomputation (budgets and MFU count these)."""
        return self.forward_flops + self.backward_flops

    @property
    def hardware_total(self) -> int:
        """Hardware FLOPs: what ran, recomputed forwards included."""
        return self.total + self.recompute_flops

    @contextmanager
    def count(self, batch: dict[str, torch.Tensor]) -> Iterator[None]:
        """Adds the FLOPs of the forward (and backward) run inside, for this batch's shape.

        A shape is counted under FlopCounterMode the first time (forward and backward apart),
        then its figures are reused without instrumenting the passes.
        """
        key = shape_key(batch)
        if not self.enabled or key in self.cache:
            yield
        else:
            t0 = time.perf_counter()
            with phase("count flops"), counter() as fc:
                yield
            self.cache[key] = tuple(phase_flops(fc, p) for p in ("forward", "backward", "recompute"))
            self.counting_seconds += time.perf_counter() - t0
        if self.enabled:
            self._add(key)

    def _add(self, key: Shape) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self.counted_shapes += 1
        fwd, bwd, *rec = self.cache[key]  # a checkpoint saved before recomputation was counted holds pairs
        self.forward_flops += fwd
        self.backward_flops += bwd
        self.recompute_flops += sum(rec)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """A forward pass whose FLOPs are added (evaluation: no backward)."""
        with self.count(batch):
            return model(**batch)

    def generate(self, model: nn.Module, batch: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        """model.generate with its FLOPs added: each forward shape counted once (measure/gen_flops.py)."""
        if not self.enabled:
            return model.generate(**batch, **kwargs)
        out, flops, seconds = counted_generate(model, batch, kwargs, self.calls)
        self.forward_flops += flops
        self.counting_seconds += seconds
        return out

    def count_step_from_row(self, model: nn.Module, batch: dict[str, torch.Tensor], loss_fn: LossFn | None = None) -> None:
        """Keeps (and adds) the FLOPs of a training step on this batch's shape, counted on its first row
        times the batch size: every row runs the same ops on the same shapes, so a step costs B rows
        (tests/test_flops_rows.py checks it against whole batches). A batch whose tensors disagree on
        the number of rows is counted whole. For calibration: ~B times cheaper than counting the batch."""
        rows = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
        if len(rows) != 1 or (n := rows.pop()) == 1:
            self.train_step(model, batch, loss_fn)
            return
        one = FlopMeter()
        one.train_step(model, {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, loss_fn)
        self.cache[shape_key(batch)] = tuple(n * f for f in next(iter(one.cache.values())))
        self.counting_seconds += one.counting_seconds
        self._add(shape_key(batch))

    def train_step(self, model: nn.Module, batch: dict[str, torch.Tensor], loss_fn: LossFn | None = None) -> torch.Tensor:
        """Forward + backward of one micro-batch, counted; returns the loss, detached. loss_fn: the training
        loop's (lm_loss.loss), so forward and backward FLOPs split as the loop's do; default the model's loss.

        For counting without training (calibration, tests); the training loop writes its own.
        """
        with self.count(batch):
            loss = loss_fn(model, batch) if loss_fn else model(**batch).loss
            loss.backward()
        return loss.detach()
