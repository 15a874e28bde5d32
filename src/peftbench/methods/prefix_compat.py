"""Soft prompts on transformers that renamed `past_key_values` to `cache` (5.24 and later).

peft attaches prefixes by passing `past_key_values` and decides whether a model can take them
by reading the forward's signature. transformers 5.24 renamed the argument to `cache` (the old
name still works through a deprecation shim, but the signature no longer shows it), so peft
refuses every sequence-classification model. Giving the model (or, where the task model does
not take a cache itself, its backbone: BERT) a forward that shows `past_key_values` and hands
it on as `cache` lets peft use the path it always used. Checked: a padded row equals the same
row alone, and gradients reach the prefix, on BERT, GPT-2 and Llama.

Generation has the same rename: peft's prepare_inputs_for_generation looks for the cache under
`past_key_values`, finds none at every step and so injects the virtual tokens (prompt, P-tuning)
or a fresh prefix (which replaced the whole cache) at every decoding step: wrong text, and on
GPT-2 a position index past its table. `generation_ready` hands peft the cache under the old name
and the model its output under the new one (tests/test_prompt_generation.py: generated text equals
a cache-free greedy decode through the training forward), and gives prompt and P-tuning back the
position ids peft drops, so that a left-padded row generates what it generates alone.
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any

import torch
from torch import nn

PAST = "past_key_values"


def _params(fn: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def _alias_cache(module: nn.Module) -> bool:
    """Give `module` a forward that takes past_key_values as cache; True if it now takes them."""
    fwd = module.forward
    params = _params(fwd)
    if PAST in params:
        return True
    if "cache" not in params:
        return False

    @functools.wraps(fwd)
    def forward(*args: Any, past_key_values: Any = None, **kwargs: Any) -> Any:
        if past_key_values is not None:  # None must not override a cache the caller passes on
            kwargs["cache"] = past_key_values
        return fwd(*args, **kwargs)

    sig = inspect.signature(fwd)
    ps = list(sig.parameters.values())
    var_kw = [i for i, p in enumerate(ps) if p.kind is inspect.Parameter.VAR_KEYWORD]
    ps.insert(var_kw[0] if var_kw else len(ps), inspect.Parameter(PAST, inspect.Parameter.KEYWORD_ONLY, default=None))
    forward.__signature__ = sig.replace(parameters=ps)  # what peft reads
    module.forward = forward  # an instance attribute: nn.Module.__call__ uses it
    return True


def accept_prefixes(model: nn.Module) -> bool:
    """Make peft's prefix path work on `model`; False where no part of it can take key/value prefixes.

    peft tries the task model first and, for sequence classification, falls back to its backbone."""
    if _alias_cache(model):
        return True
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    return isinstance(backbone, nn.Module) and _alias_cache(backbone)


def _cache_as_past(inner: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    out = inner(*args, **kwargs)
    if "cache" in out and PAST not in out:
        out[PAST] = out.pop("cache")
    return out


def _prepare(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """peft's prepare_inputs_for_generation, seeing the cache as past_key_values; the model gets it as cache.
    (Its parameter must be named `kwargs`: transformers then checks model kwargs against the forward.)"""
    inner = self.base_model_prepare_inputs_for_generation
    self.base_model_prepare_inputs_for_generation = functools.partial(_cache_as_past, inner)
    try:
        out = type(self).prepare_inputs_for_generation(self, *args, **kwargs)
    finally:
        self.base_model_prepare_inputs_for_generation = inner
    if PAST in out:
        cache = out.pop(PAST)
        out["cache"] = cache if cache is not None else out.get("cache")
    _positions_from_mask(self, out)
    return out


def _positions_from_mask(model: Any, out: dict[str, Any]) -> None:
    """Position ids from the attention mask, virtual tokens included, for prompt tuning and P-tuning on a
    decoder: peft drops the ones generate computes, and the model then numbers a left-padded row's pads
    as if they were text (its text sits further from the virtual tokens than in training, where rows are
    right-padded, and its batched output differed from the same prompt alone)."""
    mask = out.get("attention_mask")
    if (model.active_peft_config.peft_type in ("PREFIX_TUNING", "CARTRIDGE")  # positions offset by peft itself
            or getattr(model.get_base_model().config, "is_encoder_decoder", False)
            or not isinstance(mask, torch.Tensor) or mask.dim() != 2):
        return
    step = out.get("inputs_embeds") if out.get("inputs_embeds") is not None else out.get("input_ids")
    if step is None:
        return
    positions = mask.long().cumsum(-1) - 1
    out["position_ids"] = positions.masked_fill(mask == 0, 1)[:, -step.shape[1]:]


def generation_ready(model: nn.Module) -> nn.Module:
    """A peft soft-prompt model whose generate keeps one cache (see the module's docstring); others as they are."""
    config = getattr(model, "active_peft_config", None)
    base = getattr(model, "get_base_model", None)
    if not getattr(config, "is_prompt_learning", False) or base is None or "prepare_inputs_for_generation" in vars(model):
        return model
    if "cache" not in _params(base().forward):  # transformers before the rename: peft's own path works
        return model
    # A bound method, not a closure: copy.deepcopy rebinds it to the copy.
    model.prepare_inputs_for_generation = types.MethodType(_prepare, model)
    return model
