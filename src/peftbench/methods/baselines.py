"""Reference points: the untouched model, the head alone, and full fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from peftbench.errors import UserError
from peftbench.methods import register
from peftbench.methods.base import Context, Method, Params
from peftbench.tasks import pooling

HEAD_FILE = "head.safetensors"


def _head_state(model: nn.Module, heads: list[str]) -> dict:
    prefixes = tuple(p + "." for p in heads)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k.startswith(prefixes)}


@register
class Base(Method):
    name = "base"
    summary = "No training: the model as loaded (its task head is freshly initialised)"
    default_lr = None
    trains = False
    can_merge = True  # the model plus its (saved) head is a plain model

    heads: list[str] = []  # the task's new head (none for generation: the LM head is the model's own)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        self.check(ctx)
        self.heads = list(ctx.head_modules)
        model.requires_grad_(False)
        return model

    def save(self, model: nn.Module, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        save_file(_head_state(model, self.heads), str(out / HEAD_FILE))  # the random head, for reproducibility

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        model.load_state_dict(load_file(str(src / HEAD_FILE)), strict=False)
        return model


@register
class Head(Base):
    name = "head"
    summary = "Train only the task head; the backbone stays frozen"
    default_lr = 5e-2  # a linear probe on frozen features takes a large step
    trains = True
    needs_head = True

    def check(self, ctx: Context) -> None:
        if self.needs_head and not ctx.head_modules:
            raise UserError(
                "method 'head' trains a task head, and this task has none (it generates text with the "
                "model's own LM head); use lora, ia3, prompt or full instead"
            )

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        model = super().apply(model, ctx)
        for name in self.heads:
            model.get_submodule(name).requires_grad_(True)
        return model


@register
class Full(Method):
    name = "full"
    summary = "Full fine-tuning: every parameter trains"
    default_lr = 1e-4
    can_merge = True  # nothing to merge: the saved model is already plain
    frozen_base = False

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        model.requires_grad_(True)
        return model

    def save(self, model: nn.Module, out: Path) -> None:
        model.save_pretrained(out, safe_serialization=True)

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        # from_pretrained, not load_state_dict: transformers 5 may save checkpoint names that
        # differ from the modules' (ViT's q_proj is saved as "query"), and it maps them back.
        loaded = pooling.reinstall(type(model).from_pretrained(src))  # its config records a pooling hook
        return loaded.to(next(model.parameters()).device)


class FewShotParams(Params):
    k: int = Field(4, ge=1, le=64, description="training examples placed before every input")
    seed: int = Field(0, description="which training examples (the same ones for every input)")

    other_names: ClassVar[dict[str, str]] = {"shots": "k", "num_shots": "k", "n_shots": "k"}


@register
class FewShot(Base):
    name = "few_shot"
    summary = "No training: k solved training examples in the prompt (in-context learning)"
    Params = FewShotParams
    can_merge = False  # the demonstrations live in the prompt, not in any weights
    lm_scoring = True  # a decoder classifies by scoring label names, since a head reads no demonstrations
    families = ("decoder", "seq2seq")  # it prompts a text generator

    def check(self, ctx: Context) -> None:
        if ctx.family not in self.families:
            raise UserError(
                f"method 'few_shot' prompts a text generator and this model is of the {ctx.family} family; "
                "use a decoder (GPT-2, Llama, SmolLM2) or seq2seq (T5, BART) model"
            )

    def prepare_task(self, task: Any) -> None:
        task.demonstrate(self.params.k, self.params.seed)
