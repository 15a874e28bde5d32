"""Soft prompts: prefix tuning (Li & Liang 2021), prompt tuning (Lester et al. 2021) and P-tuning (Liu et al. 2021)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from peftbench.errors import UserError
from peftbench.methods import register
from peftbench.methods.base import Context, Params, PeftMethod
from peftbench.methods.prefix_compat import accept_prefixes


class SoftPrompt(PeftMethod):
    """Virtual tokens need a token sequence: there is none in a vision model's input."""

    families = ("encoder", "decoder", "seq2seq")

    def check(self, ctx: Context) -> None:
        if ctx.family in self.families and ctx.peft_task_type is None:  # e.g. a multiple-choice encoder head
            raise UserError(
                f"method '{self.name}' needs one of peft's task types (sequence classification, causal or "
                "seq2seq LM) and this task/model pair has none; use lora, ia3 or adapters, "
                "or a decoder or seq2seq model"
            )
        if ctx.family not in self.families:
            raise UserError(
                f"method '{self.name}' adds virtual text tokens and cannot apply to a vision model; "
                "use lora, ia3, loha, lokr, vera, adapters or full"
            )


class PrefixParams(Params):
    num_virtual_tokens: int = Field(20, ge=1, le=512)
    prefix_projection: bool = Field(False, description="reparametrize the prefix through an MLP")
    encoder_hidden_size: int | None = Field(None, ge=1, description="MLP width when prefix_projection is on")

    other_names: ClassVar[dict[str, str]] = {"prefix_length": "num_virtual_tokens", "length": "num_virtual_tokens"}


@register
class Prefix(SoftPrompt):
    name = "prefix"
    summary = "Trainable key/value prefixes in every attention layer"
    Params = PrefixParams
    default_lr = 3e-2

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        self.check(ctx)  # a vision model gets its own line before its layers are looked at
        if not accept_prefixes(model):  # before any training: the model cannot take key/value prefixes
            import transformers

            kind = getattr(getattr(model, "config", None), "model_type", "this model")
            raise UserError(
                f"method 'prefix' needs a model whose attention takes past key values, and {kind} "
                f"(transformers {transformers.__version__}) takes none; use prompt or p_tuning "
                "(virtual input tokens), or prefix on a decoder or seq2seq model"
            )
        return super().apply(model, ctx)

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        accept_prefixes(model)
        return super().load(model, src)

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
class Prompt(SoftPrompt):
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


class PTuningParams(Params):
    num_virtual_tokens: int = Field(20, ge=1, le=512)
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = Field(
        "MLP", description="the prompt encoder: a 2-layer MLP (peft's recommendation) or a bidirectional LSTM + MLP"
    )
    encoder_hidden_size: int = Field(128, ge=1, description="width of the prompt encoder")
    encoder_num_layers: int = Field(2, ge=1, le=8, description="LSTM layers (the MLP always has 2)")
    encoder_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout between LSTM layers (the MLP has none)")

    other_names: ClassVar[dict[str, str]] = {
        "prompt_length": "num_virtual_tokens", "length": "num_virtual_tokens",
        "encoder_type": "encoder_reparameterization_type", "reparameterization": "encoder_reparameterization_type",
        "hidden_size": "encoder_hidden_size", "num_layers": "encoder_num_layers", "dropout": "encoder_dropout",
    }

    @field_validator("encoder_reparameterization_type", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> PTuningParams:
        # peft ignores both for the MLP encoder (with a warning for the layers): refuse instead.
        if self.encoder_reparameterization_type == "MLP":
            if self.encoder_num_layers != 2:
                raise ValueError(
                    f"encoder_num_layers={self.encoder_num_layers} applies to the LSTM encoder only (the MLP has 2 layers); "
                    "drop it or set encoder_reparameterization_type=LSTM"
                )
            if self.encoder_dropout:
                raise ValueError(
                    f"encoder_dropout={self.encoder_dropout} applies to the LSTM encoder only (the MLP has no dropout); "
                    "drop it or set encoder_reparameterization_type=LSTM"
                )
        elif self.encoder_dropout and self.encoder_num_layers == 1:
            raise ValueError("encoder_dropout acts between LSTM layers and needs encoder_num_layers of 2 or more")
        return self


@register
class PTuning(SoftPrompt):
    name = "p_tuning"
    summary = "Virtual-token embeddings produced by a trained prompt encoder (MLP or LSTM) (Liu et al. 2021)"
    Params = PTuningParams
    # peft's example uses 1e-3 over 20 epochs; over peftbench's short budgets that only fits the
    # head. MiniLM on tweet_eval_emotion, 200 steps of 16: val macro-F1 0.15 at 1e-3 (majority
    # class), 0.44 at 1e-2, 0.54 at 3e-2 (head alone at 1e-2: 0.30).
    default_lr = 3e-2

    def peft_config(self, ctx: Context):
        from peft import PromptEncoderConfig

        p = self.params
        return PromptEncoderConfig(
            task_type=ctx.peft_task_type, num_virtual_tokens=p.num_virtual_tokens,
            encoder_reparameterization_type=p.encoder_reparameterization_type,
            encoder_hidden_size=p.encoder_hidden_size, encoder_num_layers=p.encoder_num_layers,
            encoder_dropout=p.encoder_dropout,
        )

    def save(self, model: nn.Module, out: Path) -> None:
        # peft saves the encoder's output, computed in whatever mode the model is in: in
        # training mode the LSTM's dropout would be baked into the saved virtual tokens.
        was_training = model.training
        model.eval()
        try:
            super().save(model, out)
        finally:
            model.train(was_training)
