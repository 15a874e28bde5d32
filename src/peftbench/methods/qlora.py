"""QLoRA (Dettmers et al. 2023): LoRA over a frozen base model held in 4-bit NF4.

The base weights are quantized as the model loads (bitsandbytes: NF4, double quantization,
bfloat16 compute), which is why this method has `load_kwargs`: the caller passes them to
from_pretrained. The LoRA matrices and the task head train in float32; norms and
embeddings are upcast to float32 by peft's prepare_model_for_kbit_training, which also
turns on gradient checkpointing (QLoRA's memory recipe; a switch here).

bitsandbytes' 4-bit kernels need a CUDA GPU: on a machine without one (or without the
package) the method refuses with one line before any model is loaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator
from torch import nn

from peftbench.errors import UserError
from peftbench.methods import register
from peftbench.methods.base import Context
from peftbench.methods.lora import Lora, LoraParams
from peftbench.train.grad_checkpointing import checkpoint_kwargs

BNB_MIN = "0.45"
NO_CUDA = "method 'qlora' needs a CUDA GPU (4-bit weights through bitsandbytes); this machine has none — use lora"
INSTALL = f"pip install 'bitsandbytes>={BNB_MIN}' (or: pip install 'peftbench[qlora]')"
# Task heads are new and trained: they must stay in full precision. transformers only keeps
# the output embeddings and the last parameter's module out of 4-bit, and naming skip
# modules replaces that default, so the usual head names of every Auto* class are listed.
KEEP_FULL_PRECISION = ["lm_head", "score", "classifier", "pre_classifier", "classification_head", "qa_outputs"]


class QLoraParams(LoraParams):
    gradient_checkpointing: bool = Field(
        True, description="recompute activations in the backward pass (QLoRA's memory saving; slower)"
    )

    @model_validator(mode="after")
    def _base_stays(self) -> QLoraParams:
        if self.init not in ("default", "gaussian", "eva", "orthogonal"):
            raise ValueError(f"init {self.init} changes the base weights, which qlora holds in 4 bits; use lora with "
                             f"init={self.init}, or qlora with init default, gaussian, eva or orthogonal")
        return self


@register
class QLora(Lora):
    name = "qlora"
    summary = "LoRA over a 4-bit NF4-quantized frozen base model (Dettmers et al. 2023); needs a CUDA GPU"
    Params = QLoraParams
    # default_lr: LoRA's, so that lora and qlora differ only in the 4-bit base. (The QLoRA
    # paper used 2e-4 for 7B-13B models and 1e-4 above; pass --lr for those.)
    can_merge = False  # merging re-quantizes the 4-bit weights; merge into the full-precision base instead
    needs_cuda = True

    @classmethod
    def preflight(cls) -> None:
        """Refuse (UserError) a machine that cannot run 4-bit bitsandbytes; cheap, needs no model."""
        import torch

        if not torch.cuda.is_available():
            raise UserError(NO_CUDA)
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError(f"method 'qlora' needs the bitsandbytes package, which is not installed; run: {INSTALL}")
        from importlib.metadata import version

        from packaging.version import Version

        have = version("bitsandbytes")
        if Version(have) < Version(BNB_MIN):
            raise UserError(f"method 'qlora' needs bitsandbytes {BNB_MIN} or newer (installed: {have}); run: {INSTALL}")

    def check(self, ctx: Context) -> None:
        self.preflight()

    def load_kwargs(self) -> dict[str, Any]:
        self.preflight()
        import torch
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_use_double_quant=True, llm_int8_skip_modules=KEEP_FULL_PRECISION,
            ),
        }

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        from peft import prepare_model_for_kbit_training

        self.check(ctx)
        if not getattr(model, "is_loaded_in_4bit", False):
            raise RuntimeError(  # a caller's bug, not the user's: QLoRA without 4-bit weights is just LoRA
                "qlora.apply got a model that is not loaded in 4-bit; load it with "
                "from_pretrained(..., **method.load_kwargs())"
            )
        quantized = [h for h in ctx.head_modules if _is_4bit(_submodule(model, h))]
        if quantized:
            raise RuntimeError(
                f"qlora: the task head {', '.join(quantized)} was quantized to 4-bit and cannot train; "
                "add its name to KEEP_FULL_PRECISION in peftbench/methods/qlora.py"
            )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=self.params.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpoint_kwargs(),  # recomputation counted as hardware FLOPs only
        )
        return super().apply(model, ctx)

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        """The saved adapter onto a base loaded with load_kwargs(); norms and head in float32 as in training."""
        from peft import prepare_model_for_kbit_training

        if getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().load(model, src)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _is_4bit(module: nn.Module | None) -> bool:
    return module is not None and any(type(m).__name__ == "Linear4bit" for m in module.modules())
