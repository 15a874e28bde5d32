"""Reference points: the untouched model, the head alone, and full fine-tuning."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from peftbench.methods import register
from peftbench.methods.base import Context, Method, head_prefixes

HEAD_FILE = "head.safetensors"


def _head_state(model: nn.Module) -> dict:
    heads = tuple(p + "." for p in head_prefixes(model))
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k.startswith(heads)}


@register
class Base(Method):
    name = "base"
    summary = "No training: the model as loaded (its task head is freshly initialised)"
    default_lr = None
    trains = False

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        model.requires_grad_(False)
        return model

    def save(self, model: nn.Module, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        save_file(_head_state(model), str(out / HEAD_FILE))  # the random head, for reproducibility

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        model.load_state_dict(load_file(str(src / HEAD_FILE)), strict=False)
        return model


@register
class Head(Base):
    name = "head"
    summary = "Train only the task head; the backbone stays frozen"
    default_lr = 5e-2  # a linear probe on frozen features takes a large step
    trains = True

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        model.requires_grad_(False)
        for prefix in head_prefixes(model):
            getattr(model, prefix).requires_grad_(True)
        return model


@register
class Full(Method):
    name = "full"
    summary = "Full fine-tuning: every parameter trains"
    default_lr = 1e-4
    can_merge = True  # nothing to merge: the saved model is already plain

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        model.requires_grad_(True)
        return model

    def save(self, model: nn.Module, out: Path) -> None:
        model.save_pretrained(out, safe_serialization=True)

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        state: dict = {}
        for f in sorted(src.glob("*.safetensors")):
            state.update(load_file(str(f)))
        model.load_state_dict(state, strict=False)  # strict=False: tied weights are saved once
        return model
