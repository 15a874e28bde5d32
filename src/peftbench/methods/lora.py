"""LoRA (its initialisations, DoRA, rsLoRA, LoRA+ and LoRA-FA) and AdaLoRA, through peft."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
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
    init: str = Field("default", description="initialisation: default (B=0) | gaussian | pissa | pissa_niter_K | olora | eva | "
                      "loftq | corda | orthogonal")
    init_batches: int = Field(8, ge=1, le=10_000, description="training batches EVA and CorDA read to initialise "
                              "(their forward FLOPs are stored as setup FLOPs)")
    eva_rho: float = Field(2.0, ge=1.0, description="EVA: how far ranks may be redistributed across layers (1: none)")
    corda_method: Literal["ipm", "kpm"] = Field("ipm", description="CorDA: ipm (instruction-previewed) or kpm (knowledge-preserved)")
    loftq_bits: Literal[4, 8] = Field(4, description="LoftQ: bits of the quantised base the adapter starts from")
    loraplus_lr_ratio: float | None = Field(None, gt=0, description="LoRA+: B learns at lr x this ratio (the paper uses 16)")
    lora_fa: bool = Field(False, description="LoRA-FA: A frozen, B updated by peft's LoRA-FA optimizer")

    other_names: ClassVar[dict[str, str]] = {
        "rank": "r", "lora_r": "r", "lora_rank": "r", "lora_alpha": "alpha",
        "lora_dropout": "dropout", "targets": "target_modules", "dora": "use_dora", "rslora": "use_rslora",
        "init_lora_weights": "init", "initialization": "init", "loraplus": "loraplus_lr_ratio", "lorafa": "lora_fa",
    }
    # Added after runs were stored: left out of the stored (hashed) params at these values.
    NEW_DEFAULTS: ClassVar[dict[str, Any]] = {"init": "default", "init_batches": 8, "eva_rho": 2.0, "corda_method": "ipm",
                                              "loftq_bits": 4, "loraplus_lr_ratio": None, "lora_fa": False}

    @field_validator("init")
    @classmethod
    def _init(cls, v: str) -> str:
        if not re.fullmatch(r"default|gaussian|pissa|pissa_niter_\d+|olora|eva|loftq|corda|orthogonal", v):
            raise ValueError(f"unknown init '{v}'; use default, gaussian, pissa, pissa_niter_K (K an integer), olora, eva, "
                             "loftq, corda or orthogonal")
        return v

    @model_validator(mode="after")
    def _combos(self) -> LoraParams:
        if self.init == "orthogonal" and self.r % 2:
            raise ValueError(f"init orthogonal needs an even rank r (got {self.r})")
        if self.lora_fa and self.loraplus_lr_ratio is not None:
            raise ValueError("lora_fa and loraplus_lr_ratio each set the optimizer; keep one of them")
        if self.lora_fa and self.use_dora:
            raise ValueError("lora_fa's update assumes plain LoRA (B·A); it does not apply with use_dora")
        return self


MUTATES_BASE = ("pissa", "olora", "corda")  # inits that move part of W into the adapter: saved as plain LoRA (rank 2r)


@register
class Lora(PeftMethod):
    name = "lora"
    summary = ("Low-rank update BA added to target layers (Hu et al. 2021); PiSSA/OLoRA/EVA/LoftQ/CorDA inits, "
               "DoRA, rsLoRA, LoRA+, LoRA-FA")
    Params = LoraParams
    default_lr = 2e-3
    can_merge = True

    def load_kwargs(self) -> dict[str, Any]:
        if self.params.init == "loftq":
            from peft.import_utils import is_bnb_4bit_available

            if not torch.cuda.is_available():  # peft 0.21's LoftQ quantiser computes on "cuda" (or xpu), hard-coded
                raise UserError("lora init loftq needs a CUDA GPU (peft quantises the base there); this machine has none: "
                                "pick another init, e.g. pissa")
            if not is_bnb_4bit_available():
                raise UserError("lora init loftq quantises the base through bitsandbytes, which is not installed: "
                                "pip install 'peftbench[qlora]'")
        return {}

    def normalized_params(self) -> dict[str, Any]:
        out = super().normalized_params()
        return {k: v for k, v in out.items() if k not in LoraParams.NEW_DEFAULTS or v != LoraParams.NEW_DEFAULTS[k]}

    def peft_config(self, ctx: Context):
        from peft import LoraConfig

        p = self.params
        extra: dict[str, Any] = {}
        if p.init == "eva":
            from peft import EvaConfig

            extra["eva_config"] = EvaConfig(rho=p.eva_rho)
        elif p.init == "loftq":
            from peft import LoftQConfig

            extra["loftq_config"] = LoftQConfig(loftq_bits=p.loftq_bits, loftq_iter=1)
        elif p.init == "corda":
            from peft.tuners.lora.config import CordaConfig

            extra["corda_config"] = CordaConfig(corda_method=p.corda_method)
        return LoraConfig(
            task_type=ctx.peft_task_type, r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout,
            target_modules=p.target_modules, use_dora=p.use_dora, use_rslora=p.use_rslora, bias=p.bias,
            init_lora_weights=True if p.init == "default" else p.init, **extra,
        )

    def _data(self, ctx: Context) -> list[dict[str, Any]]:
        if ctx.data is None:
            raise UserError(f"lora init {self.params.init} reads training batches; it runs inside a peftbench run")
        batches = ctx.data.batches(self.params.init_batches)
        if not batches:
            raise UserError(f"lora init {self.params.init} needs training data, and the train split is empty")
        return batches

    def before_wrap(self, model: nn.Module, config: Any, ctx: Context) -> None:
        if self.params.init == "corda":  # covariance of each target layer's inputs over the first batches
            from peftbench.methods.lora_variants import corda_statistics

            assert ctx.data is not None
            corda_statistics(model, config, ctx.data, self._data(ctx))

    def after_wrap(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        if p.init == "eva":  # A from the SVD of each layer's inputs on the first batches; ranks redistributed
            from peftbench.methods.lora_variants import eva_init

            assert ctx.data is not None
            eva_init(model, ctx.data, self._data(ctx), p.r, p.eva_rho)
        if p.init.startswith(MUTATES_BASE):
            # The base now holds W minus the initial BA. To save an adapter for the unchanged base, peft
            # subtracts the initial adapter at save time; keep it (saved with init True, as peft requires).
            self._initial = tempfile.TemporaryDirectory(prefix="peftbench-lora-init-")
            config = model.peft_config["default"]
            init, config.init_lora_weights = config.init_lora_weights, True
            try:
                model.save_pretrained(str(Path(self._initial.name, "initial")), safe_serialization=True)
            finally:
                config.init_lora_weights = init
        if p.lora_fa:
            for name, param in model.named_parameters():
                if "lora_A" in name:
                    param.requires_grad_(False)
        return model

    def save(self, model: nn.Module, out: Path) -> None:
        initial = getattr(self, "_initial", None)
        if initial is None:
            return super().save(model, out)
        from peftbench.methods.lora_variants import save_converted

        save_converted(model, out, Path(initial.name, "initial"))

    def param_groups(self, model: nn.Module, groups: list[dict[str, Any]], lr: float,
                     heads: tuple[str, ...]) -> list[dict[str, Any]]:
        ratio = self.params.loraplus_lr_ratio
        if ratio is None:
            return groups
        from peftbench.methods.lora_variants import loraplus_groups

        return loraplus_groups(model, groups, lr, heads, ratio)

    def optimizer(self, model: nn.Module, groups: list[dict[str, Any]], lr: float, weight_decay: float) -> Any | None:
        if not self.params.lora_fa:
            return None
        from peftbench.methods.lora_variants import lorafa_optimizer

        return lorafa_optimizer(model, groups, lr, weight_decay, self.params.r, self.params.alpha)


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
