"""Forgetting: how much the tuned model's language modelling got worse on general text it never trained on.

As peft's method comparison does, the measure is the change of the LM loss on a held-out general-text
sample (WikiText-2, data/general_text/) from before tuning to after: positive means the model forgot.
- Decoders: causal LM loss. A causal-LM task's model is its own LM; a decoder with a task head (a
  classifier's `score`) reads its last hidden states through the base checkpoint's LM head.
- Encoders: masked-LM loss (15% of tokens masked, the same positions before and after) through the
  base checkpoint's MLM head. A checkpoint saved without one (sentence-transformers' MiniLM) is
  skipped with a note, as are seq2seq and vision models: a loss on random new weights says nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import nn

SAMPLE = "wikitext2_valid_sample.jsonl"
MASK_SHARE = 0.15


def texts(n: int) -> list[str]:
    path = resources.files("peftbench.data").joinpath("general_text").joinpath(SAMPLE)
    rows = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:n]


@dataclass
class Probe:
    kind: str  # "masked" or "causal"
    batches: list[dict[str, torch.Tensor]]  # tokenized sample; masked: inputs masked, labels -100 elsewhere
    head: nn.Module | None  # hidden states -> vocabulary logits; None: the model's own LM output
    tokens: int  # tokens the loss is taken over

    @torch.no_grad()
    def loss(self, model: nn.Module) -> float:
        """Mean token cross-entropy of `model` on the sample (one figure, every batch's tokens pooled)."""
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        if self.head is not None:
            self.head.to(device)
        total, count = 0.0, 0
        try:
            for batch in self.batches:
                b = {k: v.to(device) for k, v in batch.items()}
                labels = b.pop("labels")
                if self.head is None:  # a causal LM: its own logits, shifted
                    logits = model(**b).logits[:, -labels.shape[1]:]  # prompt tuning prepends virtual tokens
                    logits, labels = logits[:, :-1], labels[:, 1:]
                else:
                    hidden = model(**b, output_hidden_states=True).hidden_states[-1][:, -labels.shape[1]:]
                    if self.kind == "causal":
                        hidden, labels = hidden[:, :-1], labels[:, 1:]
                    keep = labels != -100
                    logits, labels = self.head(hidden[keep].to(next(self.head.parameters()).dtype)), labels[keep]
                keep = labels != -100
                ce = nn.functional.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
                total, count = total + float(ce), count + int(keep.sum())
        finally:
            model.train(was)
        return total / max(count, 1)


def _batches(tokenizer: Any, sample: list[str], kind: str, max_length: int, batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)  # the same masked positions for every run
    out = []
    for i in range(0, len(sample), batch_size):
        enc = tokenizer(sample[i:i + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if kind == "causal":
            out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
            continue
        special = torch.tensor([tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                                for row in ids.tolist()], dtype=torch.bool)
        if tokenizer.unk_token_id is not None:  # an unknown word is text to predict, not markup
            special &= ids != tokenizer.unk_token_id
        pick = (torch.rand(ids.shape, generator=gen) < MASK_SHARE) & mask.bool() & ~special
        out.append({"input_ids": ids.masked_fill(pick, tokenizer.mask_token_id), "attention_mask": mask,
                    "labels": ids.masked_fill(~pick, -100)})
    return out


def prepare(model: nn.Module, tokenizer: Any, family: str, spec: Any, n_texts: int = 64,
            max_length: int = 128) -> Probe | str:
    """The probe for this model, or one line saying why forgetting is not measured for it."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from peftbench import models

    if family not in ("encoder", "decoder") or tokenizer is None:
        return f"forgetting is measured on encoders (masked LM) and decoders (causal LM), not on {family} models"
    kind = "masked" if family == "encoder" else "causal"
    if kind == "masked" and getattr(tokenizer, "mask_token_id", None) is None:
        return "forgetting skipped: the tokenizer has no mask token for a masked-LM loss"
    if kind == "causal" and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    head: nn.Module | None = None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    own_lm = type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if not (kind == "causal" and own_lm):
        lm, info = models.load_pretrained(AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM, spec,
                                          output_loading_info=True)
        heads = models.head_prefixes(lm)
        missing = [k for k in info.get("missing_keys", []) if heads and k.startswith(heads[0] + ".")]
        if len(heads) != 1 or missing:
            what = "masked-LM" if kind == "masked" else "LM"
            return f"forgetting skipped: the checkpoint has no {what} head (its weights are not in it), so an LM loss would read random weights"
        head = getattr(lm, heads[0]).eval()
        for p in head.parameters():
            p.requires_grad_(False)
    cfg = getattr(model, "config", None)
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or max_length
    batches = _batches(tokenizer, texts(n_texts), kind, min(max_length, limit))
    tokens = sum(int((b["labels"] != -100).sum()) for b in batches)
    return Probe(kind, batches, head, tokens)
