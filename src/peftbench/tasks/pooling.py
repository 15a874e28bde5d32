"""What a classification head reads: the checkpoint's own pooling of the hidden states.

Sentence-transformers checkpoints (the bundled all-MiniLM-L6-v2 among them) were trained to be
read by mean pooling, which their `1_Pooling/config.json` records; transformers' classification
heads read the [CLS] token through BERT's pooler instead, a layer such a checkpoint never trained.
Modes:

    model  the model's own head input, unchanged (BERT's pooler on [CLS], a decoder's last token)
    cls    the first token's hidden state
    mean   the mean of the hidden states the attention mask covers
    last   the hidden state of the last position the mask covers (left or right padding)

A forward hook on the backbone pools its last hidden states and hands the pooled vector to the
head: as the pooler output (BERT-likes, whose pooler is replaced by a weightless one) and at every
position of the last hidden state (heads that read [CLS] or the last token). The hook reads the
attention mask the backbone itself gets, so prompt tuning's virtual tokens, which peft prepends
with a mask of ones, are averaged with the text; prefix tuning's mask also covers its prefix
keys, and only its last `T` columns are the positions of the hidden states.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftbench import models
from peftbench.config import ModelSpec, RunConfig, TaskSpec
from peftbench.errors import UserError

MODES = ("model", "cls", "mean", "last")
CONFIG_ATTR = "peftbench_pooling"  # kept in the saved model's config, so a reloaded full model pools the same
# sentence-transformers' keys for the modes peftbench has (max and mean-sqrt-len pooling are not among them)
ST_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_lasttoken": "last"}


def from_folder(folder: Path) -> str | None:
    """The pooling a sentence-transformers folder records (modules.json's Pooling module, else 1_Pooling), or None."""
    where = "1_Pooling"
    try:
        mods = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        where = next((m["path"] for m in mods if str(m.get("type", "")).endswith("Pooling")), where)
    except (OSError, ValueError, TypeError, KeyError):
        pass
    try:
        conf = json.loads((folder / where / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(conf.get("pooling_mode"), str):  # newer sentence-transformers write the mode's name
        return {"cls": "cls", "mean": "mean", "lasttoken": "last"}.get(conf["pooling_mode"])
    picked = [mode for key, mode in ST_KEYS.items() if conf.get(key)]
    others = any(v for k, v in conf.items() if k.startswith("pooling_mode") and k not in ST_KEYS)
    return picked[0] if len(picked) == 1 and not others else None


@functools.lru_cache(maxsize=32)
def checkpoint_pooling(name: str, revision: str | None) -> str | None:
    """The pooling a model folder or hub repo's sentence-transformers files record, or None."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        try:
            if json.loads((folder / "config.json").read_text(encoding="utf-8")).get("is_encoder_decoder"):
                return None  # seq2seq models classify text-to-text: no head reads a pooled vector
        except (OSError, ValueError, AttributeError):
            pass
        return from_folder(folder)
    try:  # a hub id: its two small files (from the cache when offline); any failure means none recorded
        from huggingface_hub import hf_hub_download

        mods = Path(hf_hub_download(name, "modules.json", revision=revision))
        pool = next((m["path"] for m in json.loads(mods.read_text()) if str(m.get("type", "")).endswith("Pooling")), None)
        if pool is None:
            return None
        return from_folder(Path(hf_hub_download(name, f"{pool}/config.json", revision=revision)).parent.parent)
    except Exception:  # noqa: BLE001 (offline, no such file, a private repo: the model's own head then)
        return None


def resolve(task: TaskSpec, model: ModelSpec) -> str:
    """task.pooling with auto decided: the checkpoint's pooling for a classification task, else the model's own."""
    if task.kind != "classification":
        if task.pooling not in ("auto", "model"):
            raise UserError(f"--pooling {task.pooling} sets what a text classification head reads, and task "
                            f"'{task.kind}' has none; drop --pooling (task.pooling)")
        return "model"
    if task.pooling != "auto":
        return task.pooling
    return checkpoint_pooling(models.resolve(model), model.revision) or "model"


def as_stored(cfg: RunConfig) -> RunConfig:
    """A stored config without a pooling key ran with the model's own (the store leaves "model" out)."""
    if "pooling" not in cfg.task.model_fields_set:
        cfg.task.pooling = "model"
    return cfg


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """[batch, hidden] from [batch, positions, hidden]; mask: [batch, positions] (or more columns, as prefixes add)."""
    if mode == "cls":
        return hidden[:, 0]
    width = hidden.shape[1]
    mask = torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask[:, -width:]
    if mode == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    last = (mask.to(torch.long) * torch.arange(width, device=hidden.device)).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class FirstToken(nn.Module):
    """A weightless stand-in for BERT's pooler: the hook puts the pooled vector in its place."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[:, 0]


def _hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    mode = module.peftbench_pooling
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:  # passed by position: forward(input_ids, attention_mask, ...)
        names = list(inspect.signature(module.forward).parameters)
        mask = args[names.index("attention_mask")] if "attention_mask" in names[: len(args)] else None
    hidden = output[0]
    pooled = pool(hidden, mask, mode)
    output["last_hidden_state"] = pooled[:, None].expand_as(hidden)
    if output.get("pooler_output") is not None:
        output["pooler_output"] = pooled
    return output


def install(model: nn.Module, mode: str, head_modules: list[str] | None = None) -> list[str]:
    """Make the model's head read `mode` pooling; returns head_modules without a pooler that was replaced."""
    heads = list(head_modules or [])
    if mode == "model":  # nothing to record either: a saved config stays byte for byte as before
        return heads
    model.config.update({CONFIG_ATTR: mode})
    backbone = model.base_model
    if backbone is model:
        raise UserError(f"--pooling {mode} needs a model with a separate backbone and head; use --pooling model")
    if getattr(backbone, "_peftbench_pooling_hook", None) is None:
        backbone._peftbench_pooling_hook = backbone.register_forward_hook(_hook, with_kwargs=True)
    backbone.peftbench_pooling = mode
    if isinstance(getattr(backbone, "pooler", None), nn.Module):
        backbone.pooler = FirstToken()  # an untrained (or next-sentence) pooler no longer sits in the path
        gone = f"{model.base_model_prefix}.pooler"
        heads = [h for h in heads if h != gone and not h.startswith(gone + ".")]
    return heads


def reinstall(model: nn.Module) -> nn.Module:
    """The pooling a saved model's config records, put back after from_pretrained (full fine-tuning's reload)."""
    mode = getattr(getattr(model, "config", None), CONFIG_ATTR, None)
    if mode in MODES:
        install(model, mode)
    return model
