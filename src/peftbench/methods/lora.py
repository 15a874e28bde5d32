"""LoRA (with DoRA and rsLoRA switches) and AdaLoRA, through peft."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from peftbench.errors import UserError
from peftbench.methods import register
from peftbench.methods.base import Context, Params, PeftMethod

Targets = list[str] | str | None  # None: peft's per-architecture default; "all-linear"; names; regex


class LoraParams(Params):
    r: int = Field(8, ge=1, le=1024, description="rank of the update")
    alpha: float = Field(16.0, gt=0, description="scaling numerator: update is (alpha/r)·BA")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: Targets = Field(None, description="layer names, a regex, 'all-linear', or null for the model's default")
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA")
    use_rslora: bool = Field(False, description="rsLoRA: scale alpha/sqrt(r) instead of alpha/r")
    bias: Literal["none", "all", "lora_only"] = "none"


@register
class Lora(PeftMethod):
    name = "lora"
    summary = "Low-rank update BA added to target layers (Hu et al. 2021); DoRA and rsLoRA switches"
    Params = LoraParams
    default_lr = 1e-3
    can_merge = True

    def peft_config(self, ctx: Context):
        from peft import LoraConfig

        p = self.params
        return LoraConfig(
            task_type=ctx.peft_task_type, r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout,
            target_modules=p.target_modules, use_dora=p.use_dora, use_rslora=p.use_rslora, bias=p.bias,
        )


class AdaLoraParams(Params):
    init_r: int = Field(12, ge=1, description="starting rank of every target layer")
    target_r: int = Field(8, ge=1, description="average rank after re-allocation")
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: Targets = None
    tinit: float = Field(0.1, ge=0.0, lt=1.0, description="warm-up share of steps before pruning ranks")
    tfinal: float = Field(0.2, ge=0.0, lt=1.0, description="final share of steps with ranks fixed")
    delta_t: int = Field(1, ge=1, description="steps between re-allocations")
    orth_reg_weight: float = Field(0.5, ge=0.0)

    @model_validator(mode="after")
    def _check(self) -> AdaLoraParams:
        if self.target_r > self.init_r:
            raise ValueError("target_r must not exceed init_r")
        if self.tinit + self.tfinal >= 1.0:
            raise ValueError("tinit + tfinal must be below 1 (shares of the step budget)")
        return self


@register
class AdaLora(PeftMethod):
    name = "adalora"
    summary = "LoRA whose rank budget is re-allocated across layers during training (Zhang et al. 2023)"
    Params = AdaLoraParams
    default_lr = 1e-3
    can_merge = True

    def peft_config(self, ctx: Context):
        from peft import AdaLoraConfig

        p = self.params
        tinit, tfinal = int(p.tinit * ctx.total_steps), int(p.tfinal * ctx.total_steps)
        if ctx.total_steps - tinit - tfinal < 1:
            raise UserError(f"adalora needs a longer budget than {ctx.total_steps} steps; raise --steps")
        return AdaLoraConfig(
            task_type=ctx.peft_task_type, init_r=p.init_r, target_r=p.target_r, lora_alpha=p.alpha,
            lora_dropout=p.dropout, target_modules=p.target_modules, tinit=tinit, tfinal=tfinal,
            deltaT=p.delta_t, orth_reg_weight=p.orth_reg_weight, total_step=ctx.total_steps,
        )

    def on_step(self, model: nn.Module, step: int) -> None:
        # HF Trainer never calls this; without it AdaLoRA is plain LoRA with extra parameters.
        model.base_model.update_and_allocate(step)
