"""Train a chosen subset of the model's own parameters: BitFit (biases) and LN-tuning (norms)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from peftbench.methods import register
from peftbench.errors import UserError
from peftbench.methods.base import Context, Method, Params, PeftMethod, check_targets

NORM_KINDS = ("LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm")
TRAINED_FILE = "trained.safetensors"


@register
class BitFit(Method):
    name = "bitfit"
    summary = "Train only the bias terms (and the head) (Ben Zaken et al. 2022)"
    default_lr = 5e-3
    can_merge = True  # the model's own biases change: it stays a plain model

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        heads = tuple(p + "." for p in ctx.head_modules)
        if not any(n.endswith(".bias") for n, _ in model.named_parameters() if not n.startswith(heads)):
            raise UserError(
                "method 'bitfit' trains bias terms and this model has none "
                "(T5 and Llama-like models drop them); use lora, ia3 or ln_tuning instead"
            )
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(".bias") or name.startswith(heads))
        return model

    def save(self, model: nn.Module, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k in trained}
        save_file(state, str(out / TRAINED_FILE))

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        model.load_state_dict(load_file(str(src / TRAINED_FILE)), strict=False)
        return model


class LNParams(Params):
    target_modules: list[str] | str | None = Field(None, description="null: every normalization layer")


def norm_names(model: nn.Module) -> list[str]:
    """Last-name components of the model's normalization layers (peft maps only some models)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and type(m).__name__.endswith(NORM_KINDS)})


@register
class LNTuning(PeftMethod):
    name = "ln_tuning"
    summary = "Train only the normalization layers (and the head) (Zhao et al. 2024)"
    Params = LNParams
    default_lr = 5e-3
    can_merge = True

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        self._targets = self.params.target_modules or norm_names(model)
        check_targets(model, self._targets, self.name)
        return super().apply(model, ctx)

    def peft_config(self, ctx: Context):
        from peft import LNTuningConfig

        return LNTuningConfig(task_type=ctx.peft_task_type, target_modules=self._targets)
