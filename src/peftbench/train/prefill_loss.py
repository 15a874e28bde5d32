"""The teacher-forced loss from `generate`'s own prefill: the prompts run once, not twice.

Evaluation generates from each prompt and reports the teacher-forced loss of the target after it.
Run apart, the loss pass reads prompt + target and generation's prefill reads the prompt again: for
long sources (DialogSum) the prompts are most of both passes. Here a hook keeps what the prefill made,
its key/value cache and its last logits (which score the target's first token), and after `generate`
the targets alone run on top of that cache. Generation itself runs exactly as without the hook, so the
generated text is unchanged; the loss is the same quantity, computed in other shapes (equal within
float rounding: tests/test_prefill_loss.py).

A seq2seq model's prefill is its encoder: the hook keeps the encoder's output for the prompt batch
and the loss pass runs the decoder alone on it (any number of beams: generate encodes before it
expands the rows).

Only where that is sound: no prompt learning (peft injects virtual tokens or a prefix cache itself), a
prefill that read the whole prompt batch in one forward, and for a decoder-only model a plain
full-attention cache (DynamicLayer: a sliding window or a static cache is not a prefix to extend) and
greedy or sampled decoding (beam search expands the rows before the prefill). Elsewhere `capture`
yields a Prefill that is never `ready`, and the caller runs the loss pass of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftbench.train import lm_loss


@dataclass
class Prefill:
    """What the first forward of one `generate` call made: per layer (keys, values), and its last logits."""

    width: int  # the prompt batch's padded width the prefill must have read
    kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    last_logits: torch.Tensor | None = None  # [rows, vocab], fp32
    encoded: torch.Tensor | None = None  # seq2seq: the encoder's last hidden state [rows, width, hidden]
    seen: bool = False  # the first forward happened (whether or not it could be kept)

    @property
    def ready(self) -> bool:
        return self.last_logits is not None or self.encoded is not None


def applies(model: nn.Module, num_beams: int) -> bool:
    """Whether the loss can come from generate's prefill for this model (the module docstring's conditions)."""
    base = lm_loss.base_model(model)
    seq2seq = getattr(base.config, "is_encoder_decoder", False)
    if (not seq2seq and num_beams != 1) or (seq2seq and not hasattr(base, "get_encoder")):
        return False
    config = getattr(model, "active_peft_config", None)
    if config is not None and getattr(config, "is_prompt_learning", False):
        return False
    return lm_loss.lm_head(model, wrapped=True) is not None and (seq2seq or _cache_arg(base) is not None)


def _cache_arg(base: nn.Module) -> str | None:
    params = inspect.signature(base.forward).parameters
    return next((n for n in ("cache", "past_key_values") if n in params), None)  # renamed in transformers 5.24


def _output_cache(output: Any) -> Any:
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


@contextmanager
def capture(model: nn.Module, width: int, enabled: bool) -> Iterator[Prefill]:
    """Around one `generate` call: keeps the first forward's cache tensors and last logits when they
    cover the whole prompt batch (`width` positions) with full-attention layers. The tensors are
    references: a DynamicLayer's update concatenates into new tensors, leaving these as they were."""
    from transformers.cache_utils import DynamicLayer

    found = Prefill(width)
    if not enabled:
        yield found
        return

    def keep(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if found.seen:
            return
        found.seen = True
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or ids.shape[1] != width:
            return
        if seq2seq:
            found.encoded = output.last_hidden_state
            return
        layers = getattr(_output_cache(output), "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return
        kv = [(layer.keys, layer.values) for layer in layers]
        if any(k.dim() != 4 or k.shape[-2] != width for k, _ in kv):
            return
        found.kv, found.last_logits = kv, output.logits[:, -1].float()

    base = lm_loss.base_model(model)
    seq2seq = bool(getattr(base.config, "is_encoder_decoder", False))
    hook = (base.get_encoder() if seq2seq else base).register_forward_hook(keep, with_kwargs=True)
    try:
        yield found
    finally:
        hook.remove()


def _cache_of(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A DynamicCache over these tensors, without copying them (its constructor would concatenate)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache()
    for k, v in kv:
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        cache.layers.append(layer)
    return cache


def target_nll(model: nn.Module, prefill: Prefill, prompt_mask: torch.Tensor, targets: list[list[int]],
               pad_id: int, meter: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL of every target token, their count): each row's target read after its prompt's cache
    (a seq2seq model: its decoder on the kept encoder output).

    The prefill's last logits score each target's first token; the targets, right-padded after the
    left-padded prompts, score the rest. Rows run in groups of at most EVAL_POSITIONS cached + new
    positions, as the loss pass's do; the meter counts each group's forward by its shape."""
    from peftbench.tasks.text import pad

    assert prefill.ready
    found = lm_loss.lm_head(model, wrapped=True)
    assert found is not None
    if prefill.encoded is not None:
        return _decoder_nll(model, prefill.encoded, prompt_mask, pad(targets, lm_loss.IGNORE).to(prompt_mask.device),
                            found, meter)
    assert prefill.last_logits is not None
    base, head, _ = found
    device = prompt_mask.device
    ids, labels = pad(targets, pad_id).to(device), pad(targets, lm_loss.IGNORE).to(device)
    new_mask = pad([[1] * len(t) for t in targets], 0).to(device=device, dtype=prompt_mask.dtype)
    rows, width = ids.shape
    first = labels[:, 0]
    lse = prefill.last_logits.logsumexp(-1)
    total = (lse - prefill.last_logits.gather(1, first.clamp(min=0)[:, None]).squeeze(1))[first != lm_loss.IGNORE].sum()
    step = max(1, lm_loss.EVAL_POSITIONS // (prompt_mask.shape[1] + width))
    arg = _cache_arg(base)
    for s in range(0, rows, step):
        part = slice(s, s + step)
        inputs = {"input_ids": ids[part], "attention_mask": torch.cat([prompt_mask[part], new_mask[part]], 1),
                  "position_ids": prompt_mask[part].sum(1, keepdim=True) + torch.arange(width, device=device)}
        with meter.count({**inputs, "labels": labels[part]}):
            cached = {**inputs, arg: _cache_of([(k[part], v[part]) for k, v in prefill.kv]), "use_cache": True}
            hidden, flat, extra_bias = lm_loss.hidden_states(model, cached, labels[part], found)  # labels shift left
            total = total + lm_loss.summed_nll(hidden, flat, head, extra_bias)
    return total, (labels != lm_loss.IGNORE).sum()


def _decoder_nll(model: nn.Module, encoded: torch.Tensor, prompt_mask: torch.Tensor, labels: torch.Tensor,
                 found: tuple[nn.Module, nn.Module, bool], meter: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A seq2seq model's target NLL from its encoder's output: the decoder alone, rows grouped as the loss pass's."""
    from transformers.modeling_outputs import BaseModelOutput

    total = torch.zeros((), device=labels.device)
    step = max(1, lm_loss.EVAL_POSITIONS // prompt_mask.shape[1])  # lm_loss.row_groups over the prompt batch
    for s in range(0, labels.shape[0], step):
        part = slice(s, s + step)
        inputs = {"attention_mask": prompt_mask[part], "labels": labels[part]}
        with meter.count(inputs):
            hidden, flat, extra_bias = lm_loss.hidden_states(
                model, {**inputs, "encoder_outputs": BaseModelOutput(last_hidden_state=encoded[part])}, labels[part], found)
            total = total + lm_loss.summed_nll(hidden, flat, found[1], extra_bias)
    return total, (labels != lm_loss.IGNORE).sum()
