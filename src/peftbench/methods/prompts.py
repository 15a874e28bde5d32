"""Soft prompts: prefix tuning (Li & Liang 2021) and prompt tuning (Lester et al. 2021)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from peftbench.methods import register
from peftbench.methods.base import Context, Params, PeftMethod


class PrefixParams(Params):
    num_virtual_tokens: int = Field(20, ge=1, le=512)
    prefix_projection: bool = Field(False, description="reparametrize the prefix through an MLP")
    encoder_hidden_size: int | None = Field(None, ge=1, description="MLP width when prefix_projection is on")

    other_names: ClassVar[dict[str, str]] = {"prefix_length": "num_virtual_tokens", "length": "num_virtual_tokens"}


@register
class Prefix(PeftMethod):
    name = "prefix"
    summary = "Trainable key/value prefixes in every attention layer"
    Params = PrefixParams
    default_lr = 3e-2

    def peft_config(self, ctx: Context):
        from peft import PrefixTuningConfig

        p = self.params
        return PrefixTuningConfig(
            task_type=ctx.peft_task_type, num_virtual_tokens=p.num_virtual_tokens,
            prefix_projection=p.prefix_projection, encoder_hidden_size=p.encoder_hidden_size,
        )


class PromptParams(Params):
    num_virtual_tokens: int = Field(20, ge=1, le=512)
    init: Literal["random", "text"] = Field("text", description="initialise from the embedding of init_text, or randomly")
    init_text: str = Field("Classify this text:", min_length=1)

    other_names: ClassVar[dict[str, str]] = {
        "prompt_length": "num_virtual_tokens", "length": "num_virtual_tokens", "prompt_tuning_init": "init",
        "prompt_tuning_init_text": "init_text",
    }


@register
class Prompt(PeftMethod):
    name = "prompt"
    summary = "Trainable soft-prompt embeddings prepended to the input"
    Params = PromptParams
    default_lr = 1e-1

    def peft_config(self, ctx: Context):
        from peft import PromptTuningConfig, PromptTuningInit

        p = self.params
        text = p.init == "text"
        return PromptTuningConfig(
            task_type=ctx.peft_task_type, num_virtual_tokens=p.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=p.init_text if text else None,
            tokenizer_name_or_path=ctx.model_name_or_path if text else None,
        )
