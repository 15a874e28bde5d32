"""Gradient checkpointing (train.gradient_checkpointing): transformers' own, non-reentrant.

Each checkpointed layer keeps only its input in the forward pass and reruns its forward in
the backward pass. The rerun is marked (measure/flops.py's checkpoint_contexts) so that its
FLOPs count as hardware FLOPs, not model FLOPs.

Non-reentrant checkpointing needs no `enable_input_require_grads()` even when the embeddings
are frozen (peft's methods, native adapters): gradients reach the checkpointed layers' trainable
weights without the layer input requiring grad. transformers turns it on regardless; it is turned
off again, which keeps model FLOPs equal to a run without checkpointing (a gradient for the
embeddings' output would add backward work through the first layer).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from peftbench.errors import UserError
from peftbench.measure.flops import checkpoint_contexts


def checkpoint_kwargs() -> dict[str, Any]:
    """gradient_checkpointing_kwargs for transformers (and peft's prepare_model_for_kbit_training)."""
    return {"use_reentrant": False, "context_fn": checkpoint_contexts}


def transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a method's wrapping (peft's PeftModel), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def enable(model: nn.Module, name: str) -> None:
    """Turn gradient checkpointing on; a model that cannot is refused (UserError) in one line."""
    base = transformers_model(model)
    if not getattr(base, "supports_gradient_checkpointing", False) or not hasattr(base, "gradient_checkpointing_enable"):
        raise UserError(f"model '{name}' ({type(base).__name__}) does not support gradient checkpointing; "
                        "drop --gradient-checkpointing (train.gradient_checkpointing)")
    had_hooks = bool(getattr(base, "_require_grads_hooks", None))
    if hasattr(base, "activation_checkpointing_enable"):  # transformers 5.x's name; the old one warns
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs())
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs())
    if not had_hooks and hasattr(base, "disable_input_require_grads"):
        base.disable_input_require_grads()  # transformers adds it for reentrant checkpointing, which this is not
