"""Prefix tuning on transformers that renamed `past_key_values` to `cache` (5.24 and later).

peft attaches prefixes by passing `past_key_values` and decides whether a model can take them
by reading the forward's signature. transformers 5.24 renamed the argument to `cache` (the old
name still works through a deprecation shim, but the signature no longer shows it), so peft
refuses every sequence-classification model. Giving the model (or, where the task model does
not take a cache itself, its backbone: BERT) a forward that shows `past_key_values` and hands
it on as `cache` lets peft use the path it always used. Checked: a padded row equals the same
row alone, and gradients reach the prefix, on BERT, GPT-2 and Llama.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

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
