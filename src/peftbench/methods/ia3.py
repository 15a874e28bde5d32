"""IA3: learned rescaling vectors on keys, values and feed-forward activations (Liu et al. 2022)."""

from __future__ import annotations

from pydantic import Field

from peftbench.methods import register
from peftbench.methods.base import Context, Params, PeftMethod, check_targets


class IA3Params(Params):
    target_modules: list[str] | str | None = Field(None, description="null: the model's default (keys, values, FFN)")
    feedforward_modules: list[str] | str | None = Field(None, description="targets scaled on their input")


@register
class IA3(PeftMethod):
    name = "ia3"
    summary = "Rescale keys, values and feed-forward activations with learned vectors"
    Params = IA3Params
    default_lr = 5e-3
    can_merge = True

    def apply(self, model, ctx: Context):
        check_targets(model, self.params.feedforward_modules, self.name)
        return super().apply(model, ctx)

    def peft_config(self, ctx: Context):
        from peft import IA3Config

        p = self.params
        return IA3Config(
            task_type=ctx.peft_task_type, target_modules=p.target_modules, feedforward_modules=p.feedforward_modules
        )
