"""LoHa and LoKr (LyCORIS: Hadamard and Kronecker low-rank updates), through peft."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from peftbench.errors import UserError
from peftbench.methods import register
from peftbench.methods.base import Context, Params, PeftMethod

Targets = list[str] | str | None


class LycorisParams(Params):
    r: int = Field(8, ge=1, le=1024, description="rank of each factor")
    alpha: float = Field(8.0, gt=0, description="scaling numerator (alpha/r)")
    rank_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on rank dimensions while training")
    module_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="chance to skip a layer's update while training")
    target_modules: Targets = Field("all-linear", description="layer names, a regex, 'all-linear', or null for peft's default")


class Lycoris(PeftMethod):
    """LoHa and LoKr differ only in peft's config class."""

    Params = LycorisParams
    default_lr = 1e-2
    can_merge = True
    peft_config_name: str

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        # peft's LyCORIS layers wrap nn.Linear and nn.Conv2d only; GPT-2's projections are
        # transformers' Conv1D, on which peft fails with a TypeError deep inside.
        if any(type(m).__name__ == "Conv1D" for m in model.modules()):
            raise UserError(
                f"method '{self.name}' cannot adapt this model's Conv1D layers (GPT-2-style); "
                "peft supports them for lora, ia3, adalora and vera — use one of those"
            )
        return super().apply(model, ctx)

    def peft_config(self, ctx: Context):
        import peft

        p = self.params
        return getattr(peft, self.peft_config_name)(
            task_type=ctx.peft_task_type, r=p.r, alpha=p.alpha, rank_dropout=p.rank_dropout,
            module_dropout=p.module_dropout, target_modules=p.target_modules,
        )


@register
class LoHa(Lycoris):
    name = "loha"
    summary = "Update as the Hadamard product of two low-rank products (Hyeon-Woo et al. 2022)"
    peft_config_name = "LoHaConfig"


@register
class LoKr(Lycoris):
    name = "lokr"
    summary = "Update as a Kronecker product with a low-rank factor (Edalati et al. 2022)"
    peft_config_name = "LoKrConfig"
