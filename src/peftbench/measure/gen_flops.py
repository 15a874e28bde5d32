"""Generation FLOPs counted per forward shape, not with a counter around every decoding step.

A counter around a whole `generate` intercepts every operation of every step in Python
(generation ran 1.86x slower). Here each forward of the generating model, its encoder and peft's
prompt encoders is keyed by what its FLOPs depend on: tensor shapes (never values), the KV
cache's layer shapes and the other arguments. A key's first call runs under a counter and its
figure is kept; a later call with that key runs uncounted and adds the figure.

A meter's first generate call still runs inside one counter spanning the whole call (forwards
with a kept figure take it off), so what runs outside those forwards is counted as before and
measured: logits processors and beam bookkeeping do no matrix products, so it is 0 and later
calls run with no counter between forwards. Where it is not 0, every call keeps the spanning one.

Decoding steps differ only in the KV-cache length L, so every step of a batch would be a new
shape. With a plain full-attention cache (transformers' DynamicLayer) a step's FLOPs are affine
in L (attention reads L keys; nothing else depends on it): steps alike but for L form a line,
counted at three lengths (the third checks the first two) and read off it afterwards. A line
whose points disagree is never used again: its steps are counted. The total equals a counter
around the whole call exactly (tests/test_flops_generation.py). Not exact for mixture-of-experts
models, whose FLOPs depend on the routing of token values.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack, _pop_mode, _push_mode
from torch.utils.flop_counter import FlopCounterMode


class _Unkeyable(Exception):
    """An argument whose FLOP-relevant content is unknown: that call is counted, never reused."""


def describe(value: Any, length: int | None = None) -> Hashable:
    """What a forward's FLOPs can depend on in one argument. With `length` (the cache's L), dimensions
    L and L + 1 are written relative to it, so that decoding steps alike but for L share a description."""
    if isinstance(value, torch.Tensor):
        if length is None:
            return ("t", tuple(value.shape), value.dtype)
        return ("t", tuple(("L", d - length) if d - length in (0, 1) else d for d in value.shape), value.dtype)
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(describe(v, length) for v in value)
    if isinstance(value, dict):  # transformers' ModelOutput (encoder_outputs) is a dict too
        return tuple((k, describe(v, length)) for k, v in value.items())
    if hasattr(value, "self_attention_cache"):  # EncoderDecoderCache: both, and which cross layers are filled
        flags = tuple(sorted(getattr(value, "is_updated", {}).items()))
        return ("encdec", describe(value.self_attention_cache, length), describe(value.cross_attention_cache, length), flags)
    if hasattr(value, "layers") and hasattr(value, "get_seq_length"):  # a transformers Cache
        return ("cache", tuple((type(layer).__name__, describe(_keys(layer), length)) for layer in value.layers))
    raise _Unkeyable(type(value).__name__)


def _keys(layer: Any) -> torch.Tensor | None:
    keys = getattr(layer, "keys", None)
    return keys if getattr(layer, "is_initialized", False) and isinstance(keys, torch.Tensor) else None


def cache_length(kwargs: dict[str, Any]) -> int | None:
    """L of a self-attention cache of full-attention layers only, all holding L > 0 positions; else None."""
    from transformers.cache_utils import DynamicLayer

    # the argument's name differs between models and versions (past_key_values, cache)
    cache = next((v for v in kwargs.values() if hasattr(v, "get_seq_length")), None)
    cache = getattr(cache, "self_attention_cache", cache)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):  # sliding windows cap L: not affine
        return None
    lengths = {k.shape[-2] if (k := _keys(layer)) is not None and k.dim() == 4 else 0 for layer in layers}
    return lengths.pop() if len(lengths) == 1 and min(lengths) > 0 else None


@dataclass
class Line:
    """FLOPs of steps alike but for L, as counted; used once three points agree on one line."""

    points: dict[int, int] = field(default_factory=dict)
    state: str = "open"  # open (fewer than 3 points), affine (checked) or broken (never used)

    def add(self, length: int, flops: int) -> None:
        predicted = self.predict(length)
        self.points[length] = flops
        if predicted is not None and predicted != flops:
            self.state = "broken"
        elif self.state == "open" and len(self.points) >= 3:
            self.state = "affine" if all(self._on_line(n, f) for n, f in self.points.items()) else "broken"

    def _on_line(self, length: int, flops: int) -> bool:
        return self._at(length) == flops

    def _at(self, length: int) -> int | None:
        (l1, f1), (l2, f2) = list(self.points.items())[:2]
        num = (f2 - f1) * (length - l1)
        return f1 + num // (l2 - l1) if num % (l2 - l1) == 0 else None

    def predict(self, length: int) -> int | None:
        return self._at(length) if self.state == "affine" else None


@dataclass
class CallFigures:
    """A meter's generation figures, kept across its generate calls."""

    exact: dict[Hashable, int] = field(default_factory=dict)  # by full description
    lines: dict[Hashable, Line] = field(default_factory=dict)  # by description relative to L
    counted_calls: int = 0  # forwards run under the counter
    reused_calls: int = 0  # forwards that added a kept figure
    outside: int | None = None  # FLOPs counted outside the hooked forwards; None until a call measured it


def counted_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules whose calls make a generate's FLOPs: the transformers model that generates
    (inside peft's wrappers), its encoder, and peft's prompt encoders (run before the first step)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = {"model": inner}
    if getattr(getattr(inner, "config", None), "is_encoder_decoder", False) and hasattr(inner, "get_encoder"):
        out["encoder"] = inner.get_encoder()
    for name, enc in getattr(model, "prompt_encoder", {}).items():
        out[f"prompt_encoder.{name}"] = enc
    return out


def _total(fc: FlopCounterMode) -> int:
    return sum(fc.flop_counts["Global"].values())


def counter_for_call() -> FlopCounterMode:
    from peftbench.measure.flops import counter

    fc = counter()
    fc.__enter__()  # left in the forward hook (it runs even when the forward raises)
    return fc


def generate(model: nn.Module, batch: dict[str, torch.Tensor], kwargs: dict[str, Any],
             figures: CallFigures) -> tuple[Any, int, float]:
    """model.generate, its FLOPs and the wall time of the forwards that ran counted."""
    from peftbench.measure.flops import counter  # flops.py imports this module

    # outside == 0: nothing to count between forwards, so only new forwards get a counter
    with nullcontext() if figures.outside == 0 else counter() as fc:
        calls = ShapeCounted(fc, figures)
        with calls.hooked(counted_modules(model)):
            out = model.generate(**batch, **kwargs)
    if fc is None:
        return out, calls.counted + calls.reused, calls.counted_seconds
    total = fc.get_total_flops()
    figures.outside = (figures.outside or 0) + total - calls.counted  # once not 0, every call spans
    return out, total + calls.reused, calls.counted_seconds


class ShapeCounted:
    """Hooks on the counted modules for one generate call, inside a counter spanning it (fc) or not (None)."""

    def __init__(self, fc: FlopCounterMode | None, figures: CallFigures) -> None:
        self.fc, self.figures = fc, figures
        self.counted = 0  # FLOPs of the forwards that ran counted
        self.reused = 0  # FLOPs added from kept figures (their calls ran uncounted)
        self.counted_seconds = 0.0  # wall time of the forwards run under the counter
        self.depth = 0  # nested counted modules (a model calling its encoder) act only at the outermost
        self.frame: tuple[Any, ...] = ()

    def _keys(self, role: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        head = (role, id(module), type(module).__name__, module.training)  # a meter's figures are its model's
        try:
            key = (*head, describe(args), describe(kwargs))
            length = cache_length(kwargs)
            family = (*head, describe(args, length), describe(kwargs, length)) if length is not None else None
        except _Unkeyable:
            return None, None, None
        return key, family, length

    def pre(self, role: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.depth += 1
            if self.depth > 1:
                return
            key, family, length = self._keys(role, module, args, kwargs)
            figures = self.figures
            known = figures.exact.get(key) if key is not None else None
            if known is None and family in figures.lines:
                known = figures.lines[family].predict(length)
            if known is not None and self.fc is None:
                self.frame = ("reuse", known, False)
                return
            stack = _get_current_dispatch_mode_stack()
            if known is not None and stack and stack[-1] is self.fc.mode:  # take off our counter, never another mode
                _pop_mode()
                self.frame = ("reuse", known, True)
                return
            fc = self.fc or counter_for_call()
            self.frame = ("count", key, family, length, fc, _total(fc), time.perf_counter())
        return hook

    def post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.depth -= 1
        if self.depth > 0:
            return
        figures = self.figures
        if self.frame[0] == "reuse":
            _, known, popped = self.frame
            if popped:
                _push_mode(self.fc.mode)
            self.reused += known
            figures.reused_calls += 1
        else:
            _, key, family, length, fc, before, t0 = self.frame
            if fc is not self.fc:
                fc.__exit__(None, None, None)
            flops = _total(fc) - before
            self.counted += flops
            if output is None:  # the forward raised (hooks run always): its partial count is no figure
                key = family = None
            if key is not None:
                figures.exact[key] = flops
            if family is not None:
                figures.lines.setdefault(family, Line()).add(length, flops)
            figures.counted_calls += 1
            self.counted_seconds += time.perf_counter() - t0
        self.frame = ()

    @contextmanager
    def hooked(self, modules: dict[str, nn.Module]) -> Iterator[None]:
        handles = []
        try:
            for role, mod in modules.items():
                handles.append(mod.register_forward_pre_hook(self.pre(role), with_kwargs=True))
                handles.append(mod.register_forward_hook(self.post, always_call=True))
            yield
        finally:
            for h in handles:
                h.remove()
