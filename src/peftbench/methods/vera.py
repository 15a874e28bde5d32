"""VeRA: frozen shared random low-rank matrices, trained scaling vectors (Kopiczko et al. 2024)."""

from __future__ import annotations

from pydantic import Field

from peftbench.methods import register
from peftbench.methods.base import Context, Params, PeftMethod


class VeraParams(Params):
    r: int = Field(256, ge=1, le=4096, description="rank of the shared random projections")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    d_initial: float = Field(0.1, gt=0.0, description="initial value of the d scaling vector")
    target_modules: list[str] | str | None = Field(None, description="null: peft's per-model default")
    projection_seed: int = Field(0, description="seed of the shared random projections")


@register
class Vera(PeftMethod):
    name = "vera"
    summary = "Shared frozen random matrices with trained per-layer scaling vectors"
    Params = VeraParams
    default_lr = 5e-2
    can_merge = True

    def peft_config(self, ctx: Context):
        from peft import VeraConfig

        p = self.params
        return VeraConfig(task_type=ctx.peft_task_type, r=p.r, vera_dropout=p.dropout, d_initial=p.d_initial,
                          target_modules=p.target_modules, projection_prng_key=p.projection_seed,
                          save_projection=True)  # saved, so reloading never depends on the RNG
