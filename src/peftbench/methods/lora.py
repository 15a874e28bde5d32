"""LoRA (with DoRA and rsLoRA switches) and AdaLoRA, through peft."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from torch import nn

from peftbench.errors import UserError
from peftbench.methods import register
from peftbench.methods.base import Context, Params, PeftMethod

Targets = list[str] | str | None  # None: peft's per-architecture default; "all-linear"; names; regex


class LoraParams(Params):
    r: int = Field(8, ge=1, le=1024, description="rank of the update")
    alpha: float = Field(16.0, gt=0, description="scaling numerator: update is (alpha/r)·BA")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input (peft's default, 0)")
    target_modules: Targets = Field(
        "all-linear", description="layer names, a regex, 'all-linear' (every linear layer but the head), or null for peft's per-model default"
    )
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA")
    use_rslora: bool = Field(False, description="rsLoRA: scale alpha/sqrt(r) instead of alpha/r")
    bias: Literal["none", "all", "lora_only"] = "none"

    other_names: ClassVar[dict[str, str]] = {
        "rank": "r", "lora_r": "r", "lora_rank": "r", "lora_alpha": "alpha",
        "lora_dropout": "dropout", "targets": "target_modules", "dora": "use_dora", "rslora": "use_rslora",
    }


@register
class Lora(PeftMethod):
    name = "lora"
    summary = "Low-rank update BA added to target layers (Hu et al. 2021); DoRA and rsLoRA switches"
    Params = LoraParams
    default_lr = 2e-3
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

    other_names: ClassVar[dict[str, str]] = {
        "r": "init_r", "rank": "init_r", "lora_alpha": "alpha", "lora_dropout": "dropout",
        "targets": "target_modules", "deltaT": "delta_t", "deltat": "delta_t",
    }

    @model_validator(mode="after")
    def _check(self) -> AdaLoraParams:
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        if self.tinit + self.tfinal >= 1.0:
            raise ValueError(
                f"tinit + tfinal ({self.tinit} + {self.tfinal}) must be below 1 (they are shares of the step budget)"
            )
        return self


@register
class AdaLora(PeftMethod):
    name = "adalora"
    summary = "LoRA whose rank budget is re-allocated across layers during training (Zhang et al. 2023)"
    Params = AdaLoraParams
    default_lr = 2e-3
    can_merge = True
    needs_step_budget = True
    step_schedule = "rank schedule"

    def peft_config(self, ctx: Context):
        from peft import AdaLoraConfig

        p = self.params
        if ctx.total_steps is None:
            raise UserError(f"{self.name}'s {self.step_schedule} is set in optimizer steps; give it a steps or epochs "
                            "budget (--steps N), not a FLOPs or seconds one")
        tinit, tfinal = int(p.tinit * ctx.total_steps), int(p.tfinal * ctx.total_steps)
        if ctx.total_steps - tinit - tfinal < 1:
            raise UserError(f"adalora needs a longer budget than {ctx.total_steps} steps; raise --steps")
        return AdaLoraConfig(
            task_type=ctx.peft_task_type, init_r=p.init_r, target_r=p.target_r, lora_alpha=p.alpha,
            lora_dropout=p.dropout, target_modules=p.target_modules, tinit=tinit, tfinal=tfinal,
            deltaT=p.delta_t, orth_reg_weight=p.orth_reg_weight, total_step=ctx.total_steps,
        )

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        model = super().load(model, src)
        # peft 0.21: a loaded (inference-mode) AdaLoRA model lacks trainable_adapter_name, and
        # its forward crashes whenever labels are given; name the adapter as training did.
        if not hasattr(model.base_model, "trainable_adapter_name"):
            model.base_model.trainable_adapter_name = model.active_adapter
        return model

    def on_step(self, model: nn.Module, step: int) -> None:
        # HF Trainer never calls this; without it AdaLoRA is plain LoRA with extra parameters.
        model.base_model.update_and_allocate(step)

    # The rank allocator's importance averages and the rank pattern change every step: a resumed
    # run needs them to allocate as an uninterrupted one does.
    ALLOCATOR: ClassVar[tuple[str, ...]] = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def train_state(self, model: nn.Module) -> dict[str, Any]:
        base = model.base_model
        state = {k: dict(getattr(base.rankallocator, k)) for k in self.ALLOCATOR}
        return {**state, "rank_pattern": base.peft_config[base.trainable_adapter_name].rank_pattern}

    def load_train_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        base, device = model.base_model, next(model.parameters()).device
        for k in self.ALLOCATOR:
            setattr(base.rankallocator, k, {n: t.to(device) for n, t in state[k].items()})
        base.peft_config[base.trainable_adapter_name].rank_pattern = state["rank_pattern"]
