"""IA3: learned rescaling vectors on keys, values and feed-forward activations (Liu et al. 2022)."""

from __future__ import annotations

from pydantic import Field, model_validator

from peftbench.methods import register
from peftbench.methods.base import Context, Params, PeftMethod, check_targets


class IA3Params(Params):
    target_modules: list[str] | str | None = Field(None, description="null: the model's default (keys, values, FFN)")
    feedforward_modules: list[str] | str | None = Field(None, description="targets scaled on their input")

    @model_validator(mode="after")
    def _check(self) -> IA3Params:
        # peft raises a bare ValueError for this only once the model is being built.
        ff, targets = self.feedforward_modules, self.target_modules
        if isinstance(ff, list) and isinstance(targets, list) and not set(ff) <= set(targets):
            extra = ", ".join(sorted(set(ff) - set(targets)))
            raise ValueError(
                f"feedforward_modules must be a subset of target_modules ({extra} is not among "
                f"{', '.join(targets)}); add it to target_modules"
            )
        return self


@register
class IA3(PeftMethod):
    name = "ia3"
    summary = "Rescale keys, values and feed-forward activations with learned vectors"
    Params = IA3Params
    default_lr = 2e-2
    can_merge = True

    def apply(self, model, ctx: Context):
        check_targets(model, self.params.feedforward_modules, self.name, key="feedforward modules")
        return super().apply(model, ctx)

    def peft_config(self, ctx: Context):
        from peft import IA3Config

        p = self.params
        return IA3Config(
            task_type=ctx.peft_task_type, target_modules=p.target_modules, feedforward_modules=p.feedforward_modules
        )
