"""Bottleneck adapters, native: parallel (He et al. 2022) and sequential (Houlsby et al. 2019, Pfeiffer et al. 2021).

An adapter is down-projection, non-linearity, up-projection, scaled by s; the up-projection
starts at zero, so a fresh adapter leaves the model's outputs exactly as they were. Each
transformer block gets its adapters as a submodule (`<block>.parallel_adapter.ffn`, ...) and
hooks wire them around a sublayer f (attention or feed-forward), before the block's residual
add (and, in post-LN models, before its layer norm):

    parallel:    f(x) + s·up(act(down(x)))   reads the sublayer's input x
    sequential:  y + s·up(act(down(y)))      y = f(x), the sublayer's output

Where the input x is read and the output rewritten, per architecture (paths inside a block;
"a -> b" means read a's input, rewrite b's output; a sequential adapter uses b only):

    architecture              attention                              feed-forward
    BERT, RoBERTa (post-LN)   attention -> attention.output.dropout  intermediate -> output.dropout
    GPT-2                     attn                                   mlp (after its dropout)
    Llama-likes               self_attn                              mlp
    ViT (transformers 5)      attention                              mlp
    BART-likes (post-LN)      self_attn                              fc1 -> fc2 (before its dropout)
    T5                        layer.0.SelfAttention                  layer.{1,2}.DenseReluDense
    cross-attention (opt-in)  encoder_attn (BART), layer.1.EncDecAttention (T5), crossattention

Attention modules return tuples; the adapter rewrites their first element (the attention output).
Placements: parallel at ffn (the paper's best, with s = 4), attention or both; sequential
houlsby (after attention and after FFN) or pfeiffer (after FFN only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from peftbench.errors import UserError
from peftbench.methods import register
from peftbench.methods.base import Context, Method, Params

WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapters.json"
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}

# Per sublayer kind, candidate (read, write) paths inside a block; the first whose modules exist wins.
SPOTS: dict[str, list[tuple[str, str]]] = {
    "attention": [
        ("attention", "attention.output.dropout"),  # BERT-likes: residual and LayerNorm sit in attention.output
        ("attention", "attention"),  # ViT (transformers 5), DistilBERT
        ("self_attn", "self_attn"),  # Llama-likes, BART-likes, OPT, Whisper, CLIP
        ("attn", "attn"),  # GPT-2
        ("layer.0.SelfAttention", "layer.0.SelfAttention"),  # T5
    ],
    "cross_attention": [
        ("crossattention", "crossattention.output.dropout"),  # BERT as a decoder
        ("crossattention", "crossattention"),  # GPT-2 with cross-attention
        ("encoder_attn", "encoder_attn"),  # BART-likes
        ("layer.1.EncDecAttention", "layer.1.EncDecAttention"),  # T5 decoder
    ],
    "ffn": [
        ("intermediate", "output.dropout"),  # BERT-likes
        ("mlp", "mlp"),  # GPT-2, Llama-likes, ViT (transformers 5)
        ("fc1", "fc2"),  # BART-likes, OPT, Whisper
        ("ffn", "ffn"),  # DistilBERT
        ("layer.1.DenseReluDense", "layer.1.DenseReluDense"),  # T5 encoder
        ("layer.2.DenseReluDense", "layer.2.DenseReluDense"),  # T5 decoder
    ],
}


class Adapter(nn.Module):
    """s·up(act(down(x))), up zero-initialised; its hooks read a sublayer's input and rewrite its output.

    The hooks are bound methods, so a deep copy of the model calls the copy's adapters.
    """

    def __init__(self, size: int, bottleneck: int, act: str, dropout: float, scaling: float, parallel: bool) -> None:
        super().__init__()
        self.down = nn.Linear(size, bottleneck)
        self.act = ACTIVATIONS[act]()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.up = nn.Linear(bottleneck, size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scaling, self.parallel = scaling, parallel
        self._x: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * self.up(self.dropout(self.act(self.down(x.to(self.up.weight.dtype)))))

    def attach(self, reader: nn.Module, writer: nn.Module) -> None:
        if self.parallel:
            reader.register_forward_pre_hook(self._read, with_kwargs=True)
        writer.register_forward_hook(self._write)

    def _read(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._x = kwargs.get("hidden_states", args[0] if args else next(iter(kwargs.values()), None))

    def _write(self, module: nn.Module, args: tuple, output: Any) -> Any:
        y = output[0] if isinstance(output, tuple) else output
        x, self._x = (self._x, None) if self.parallel else (y, None)
        y = y + self(x).to(y.dtype)
        return (y, *output[1:]) if isinstance(output, tuple) else y


def _get(block: nn.Module, path: str) -> nn.Module | None:
    try:
        return block.get_submodule(path)
    except AttributeError:
        return None


def find_blocks(model: nn.Module) -> list[tuple[nn.Module, dict[str, tuple[nn.Module, nn.Module]]]]:
    """Transformer blocks (members of a ModuleList with an attention and a feed-forward sublayer), with their spots."""
    blocks = []
    for layers in (m for m in model.modules() if isinstance(m, nn.ModuleList)):
        for block in layers:
            spots = {}
            for kind, candidates in SPOTS.items():
                for read, write in candidates:
                    reader, writer = _get(block, read), _get(block, write)
                    if reader is not None and writer is not None:
                        spots[kind] = (reader, writer)
                        break
            if "attention" in spots and "ffn" in spots:
                blocks.append((block, spots))
    return blocks


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("hidden_size", "d_model", "n_embd", "dim"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise UserError(f"cannot tell the hidden size of {type(model).__name__} (its config has no hidden_size); "
                    "use lora or ia3 for this model")


def _reduction(default: int) -> Any:
    return Field(default, ge=1, description="bottleneck = hidden size // reduction_factor (unless bottleneck_size)")


class AdapterParams(Params):
    reduction_factor: int | None = _reduction(16)
    bottleneck_size: int | None = Field(None, ge=1, description="explicit bottleneck width (instead of reduction_factor)")
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside the adapter, before the up-projection")
    cross_attention: bool = Field(False, description="also adapt each cross-attention sublayer (seq2seq decoders)")

    other_names: ClassVar[dict[str, str]] = {
        "reduction": "reduction_factor", "adapter_size": "bottleneck_size", "bottleneck": "bottleneck_size",
        "bottleneck_dim": "bottleneck_size", "r": "bottleneck_size", "activation": "non_linearity",
        "act": "non_linearity", "adapter_dropout": "dropout", "scale": "scaling", "config": "placement",
    }

    @model_validator(mode="after")
    def _size(self) -> AdapterParams:
        """One of the two sizes: an explicit bottleneck_size replaces the default reduction_factor."""
        if self.bottleneck_size is not None:
            if self.reduction_factor is not None and "reduction_factor" in self.model_fields_set:
                raise ValueError("give reduction_factor or bottleneck_size, not both")
            self.reduction_factor = None
        elif self.reduction_factor is None:
            self.reduction_factor = type(self).model_fields["reduction_factor"].default
        return self


class ParallelParams(AdapterParams):
    reduction_factor: int | None = _reduction(2)  # He et al.'s best: bottleneck 512 on 1024-wide BART-large
    placement: Literal["ffn", "attention", "both"] = Field("ffn", description="sublayers the adapters run beside")
    scaling: float = Field(4.0, gt=0.0, description="s in f(x) + s·adapter(x) (He et al.: 4 at the FFN)")


class BottleneckParams(AdapterParams):
    placement: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer", description="houlsby: after attention and FFN; pfeiffer: after FFN only")
    scaling: float = Field(1.0, gt=0.0, description="s in y + s·adapter(y)")


class AdapterMethod(Method):
    """Adapters in every transformer block; the base model frozen, the task head trained."""

    parallel: ClassVar[bool]
    placements: ClassVar[dict[str, tuple[str, ...]]]  # placement -> sublayer kinds
    default_lr = 1e-3  # a common adapter rate; not tuned on real data
    # The fresh head needs a far larger step than adapters scaled by 4 can take (BENCHMARKS.md, issue 16 item 3).
    default_head_lr = 5e-2
    can_merge = False  # the non-linearity keeps the adapter out of the weights

    heads: list[str] = []

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        self.check(ctx)
        self.heads = list(ctx.head_modules)
        model = self._inject(model)
        for name in self.heads:
            model.get_submodule(name).requires_grad_(True)
        return model

    def _inject(self, model: nn.Module) -> nn.Module:
        p = self.params
        blocks = find_blocks(model)
        if not blocks:
            kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            raise UserError(
                f"method '{self.name}' found no transformer blocks it knows in this '{kind}' model (it knows "
                "BERT-, GPT-2-, Llama-, T5-, BART- and ViT-like blocks); use lora or ia3 for this model"
            )
        size = hidden_size(model)
        width = p.bottleneck_size or size // p.reduction_factor
        if width < 1:
            raise UserError(f"{self.name} reduction_factor {p.reduction_factor} leaves no bottleneck for hidden size "
                            f"{size}; lower reduction_factor or set bottleneck_size")
        kinds = self.placements[p.placement] + (("cross_attention",) if p.cross_attention else ())
        if p.cross_attention and not any("cross_attention" in spots for _, spots in blocks):
            raise UserError(f"{self.name} cross_attention: this model has no cross-attention (only seq2seq "
                            "decoders do); drop cross_attention")
        if any(hasattr(block, self.name) for block, _ in blocks):
            raise UserError(f"this model already has {self.name} adapters; apply the method to a fresh base model")
        model.requires_grad_(False)
        for block, spots in blocks:
            ref = next(w for w in block.parameters() if w.is_floating_point())  # not a quantized weight
            adapters = nn.ModuleDict()
            for kind in (k for k in kinds if k in spots):
                adapters[kind] = Adapter(size, width, p.non_linearity, p.dropout, p.scaling, self.parallel)
                adapters[kind].to(ref.device, ref.dtype).attach(*spots[kind])
            block.add_module(self.name, adapters.train(block.training))
        return model

    def _trained(self, key: str) -> bool:
        return self.name in key.split(".") or key.startswith(tuple(h + "." for h in self.heads))

    def save(self, model: nn.Module, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if self._trained(k)}
        save_file(state, str(out / WEIGHTS_FILE))
        meta = {"method": self.name, "params": self.normalized_params(), "head_modules": self.heads}
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2))

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        """Re-inject the saved run's adapters (its own hyper-parameters) and load them with its head, all frozen."""
        meta = json.loads((src / CONFIG_FILE).read_text())
        if meta.get("method") != self.name:
            raise UserError(f"{src} holds '{meta.get('method')}' weights, not {self.name}; load it with that method")
        self.params, self.heads = self.validate(meta["params"]), list(meta["head_modules"])
        model = self._inject(model)
        state = load_file(str(src / WEIGHTS_FILE))
        missing = [k for k in model.state_dict() if self.name in k.split(".") and k not in state]
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
        if missing or unexpected:
            raise UserError(
                f"{src} does not fit this model ({len(missing)} adapter weights missing, {len(unexpected)} "
                f"unexpected, e.g. {(missing + unexpected)[0]}); load it onto the run's own base model"
            )
        return model


@register
class ParallelAdapter(AdapterMethod):
    name = "parallel_adapter"
    summary = "Bottleneck adapter beside the FFN and/or attention, added to its output (He et al. 2022)"
    Params = ParallelParams
    parallel = True
    placements = {"ffn": ("ffn",), "attention": ("attention",), "both": ("attention", "ffn")}


@register
class BottleneckAdapter(AdapterMethod):
    name = "bottleneck_adapter"
    summary = "Sequential bottleneck adapters after attention and FFN (houlsby) or FFN only (pfeiffer)"
    Params = BottleneckParams
    parallel = False
    placements = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}
