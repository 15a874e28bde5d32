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


def _token_mask(batch: dict[str, Any], config: Any) -> torch.Tensor | None:
    """Which (row, position) of the batch are real tokens (and, for an LM, targets): EVA's SVD reads only those."""
    ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    if ids is None:
        return None
    keep = (mask if mask is not None else torch.ones_like(ids)).bool()
    labels = batch.get("labels")
    if labels is not None and labels.shape == ids.shape:
        keep = keep & (labels != -100)
    return keep.reshape(-1, keep.shape[-1])


def _layer_rows(layer_input: Any, keep: torch.Tensor | None, name: str) -> torch.Tensor:
    """A layer's input as (rows, features): the kept tokens where it is laid out as the batch's tokens
    (batch, length, features), else every row (a pooler, a decoder of another length, image patches)."""
    x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    if keep is not None and x.dim() == 3 and x.shape[:2] == keep.shape:
        return x[keep].contiguous()
    return x.reshape(-1, x.shape[-1]).contiguous()


def _rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A batch as one-example batches without their padding: CorDA's statistics read one sequence at a time."""
    mask = batch.get("attention_mask")
    n = next(iter(batch.values())).shape[0]
    out = []
    for i in range(n):
        row = {k: v[i:i + 1] for k, v in batch.items()}
        if mask is not None and mask.dim() == 2:
            keep = mask[i].nonzero().squeeze(1)
            row = {k: v.index_select(1, keep) if v.dim() >= 2 and v.shape[1] == mask.shape[1] else v for k, v in row.items()}
        out.append(row)
    return out


def _sequence_targets_only(model: nn.Module, config: Any, row: dict[str, Any]) -> None:
    """CorDA's covariance reads a layer's input as (length, features); a layer fed one vector per example
    (BERT's pooler) has none, so it is left out of CorDA's targets."""
    from peft.tuners.lora.corda import target_modules

    dims: dict[str, int] = {}

    def seen(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:  # returns None: output unchanged
            dims.setdefault(name, inputs[0].dim())
        return hook

    hooks = [m.register_forward_hook(seen(n)) for n, m in target_modules(model, config)]
    try:
        with torch.no_grad():
            model(**row)
    finally:
        for h in hooks:
            h.remove()
    flat = {n for n, d in dims.items() if d < 3}
    if flat:
        config.target_modules = sorted({n for n, _ in target_modules(model, config)} - flat)


EVA_PASSES = 10  # rounds over its batches EVA may take before its components are taken as converged
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
            from peft.tuners.lora.corda import preprocess_corda
            from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

            batches, data = self._data(ctx), ctx.data
            assert data is not None
            _maybe_include_all_linear_layers(config, model)  # CorDA's hooks read target names, not 'all-linear'
            if any(b.get("input_ids") is not None and b["input_ids"].dim() > 2 for b in batches[:1]):
                raise UserError("lora init corda reads one sequence at a time, and a multiple-choice example is several; "
                                "use init pissa or eva here")
            rows = [r for b in batches for r in _rows(b)]
            _sequence_targets_only(model, config, rows[0])
            preprocess_corda(model, config, run_model=lambda: [data.forward(model, r) for r in rows])

    def after_wrap(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        if p.init == "eva":  # A from the SVD of each layer's inputs on the first batches; ranks redistributed
            from peft import initialize_lora_eva_weights

            batches, data = self._data(ctx), ctx.data
            assert data is not None
            passes = 0

            def forward(m: nn.Module, batch: dict[str, Any]) -> Any:
                # peft cycles over the batches until every layer's components converge, which noisy or
                # degenerate data may never do: after EVA_PASSES rounds, take the components as they are.
                nonlocal passes
                passes += 1
                if passes > EVA_PASSES * len(batches):
                    for module in m.modules():
                        for hook in module._forward_hooks.values():
                            if hasattr(hook, "converged"):
                                hook.converged[:] = True
                return data.forward(m, batch)

            try:
                initialize_lora_eva_weights(model, dataloader=batches, forward_fn=forward, show_progress_bar=False,
                                            prepare_model_inputs_fn=_token_mask, prepare_layer_inputs_fn=_layer_rows)
            except (AttributeError, ValueError) as err:  # a layer saw fewer input rows per batch than components
                need = round(p.r * p.eva_rho)
                raise UserError(f"lora init eva found no {need} components (r x eva_rho) for some layers ({err}); "
                                f"give it batches of at least {need} examples (--batch-size) or lower r or eva_rho") from None
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
        # peft loads the initial adapter beside the trained one to subtract it, and leaves `model` as it was
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import load_file, save_file

        model.save_pretrained(str(out), safe_serialization=True,
                              path_initial_model_for_weight_conversion=str(Path(initial.name, "initial")))
        # peft 0.21's conversion keeps only the lora_A/lora_B tensors: put back the rest (the task head, biases)
        path = Path(out, "adapter_model.safetensors")
        saved = load_file(str(path))
        rest = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()
                if "lora_A" not in k and "lora_B" not in k and k not in saved}
        if rest:
            save_file({**saved, **rest}, str(path), metadata={"format": "pt"})

    def param_groups(self, model: nn.Module, groups: list[dict[str, Any]], lr: float,
                     heads: tuple[str, ...]) -> list[dict[str, Any]]:
        ratio = self.params.loraplus_lr_ratio
        if ratio is None:
            return groups
        # Which parameters are LoRA+'s "B" is peft's rule (create_loraplus_optimizer): record its groups at lr 1
        from peft.optimizers import create_loraplus_optimizer

        class Record:
            def __init__(self, param_groups: list[dict[str, Any]], **_: Any) -> None:
                self.param_groups = param_groups

        rec = create_loraplus_optimizer(model, Record, lr=1.0, loraplus_lr_ratio=ratio, loraplus_lr_embedding=1.0)  # type: ignore[arg-type]
        scale = {id(p): g["lr"] for g in rec.param_groups for p in g["params"]}
        names = {id(p): n for n, p in model.named_parameters()}

        def mult(p: nn.Parameter) -> float:  # the task head keeps its own rate (peft would raise a head bias too)
            return 1.0 if any(m in f".{names[id(p)]}" for m in heads) else scale.get(id(p), 1.0)

        out = []
        for g in groups:
            for m in sorted({mult(p) for p in g["params"]}):
                part = [p for p in g["params"] if mult(p) == m]
                out.append({**g, "params": part, **({"lr": g.get("lr", lr) * m} if m != 1.0 else {})})
        return out

    def optimizer(self, model: nn.Module, groups: list[dict[str, Any]], lr: float, weight_decay: float) -> Any | None:
        if not self.params.lora_fa:
            return None
        from peft.optimizers import create_lorafa_optimizer
        from peft.optimizers.lorafa import LoraFAOptimizer

        made = create_lorafa_optimizer(model, self.params.r, self.params.alpha, lr, weight_decay)  # type: ignore[arg-type]
        [group] = made.param_groups  # every named parameter in peft's order: each A just before its B
        rates = {id(p): g.get("lr", lr) for g in groups for p in g["params"]}
        parts: dict[float, dict[str, list[Any]]] = {}
        for p, n, f in zip(group["params"], group["names"], group["scaling_factors"]):
            part = parts.setdefault(rates.get(id(p), lr), {"params": [], "names": [], "scaling_factors": []})
            part["params"].append(p), part["names"].append(n), part["scaling_factors"].append(f)
        return LoraFAOptimizer([{**part, "lr": rate, "betas": (0.9, 0.999), "weight_decay": weight_decay}
                                for rate, part in parts.items()])


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
