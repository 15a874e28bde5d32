"""What every text task shares: tokenizer and config loading, the length limit, batching."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer

from peftbench import models
from peftbench.config import ModelSpec, TaskSpec
from peftbench.errors import UserError

PAD_MULTIPLE = 8  # few distinct padded shapes, so FLOPs are counted a few times only

# Families whose position ids start after the padding index (RoBERTa's scheme): they take
# max_position_embeddings - (pad_token_id + 1) tokens.
PADDING_OFFSET_POSITIONS = {
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "mpnet", "ibert", "data2vec-text",
    "xmod", "roberta-prelayernorm",
}


def length_grouped_batches(lengths: list[int], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """One epoch of batches of similar length, in random order (as HF's group_by_length).

    Shuffle, cut into mega-batches of 50 batches, sort each by length, then shuffle the
    batches: padding (wasted compute) drops a lot while every example is still seen once.
    """
    order = rng.permutation(len(lengths)).tolist()
    mega = batch_size * 50
    batches = []
    for m in range(0, len(order), mega):
        chunk = sorted(order[m : m + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def endless_batches(rows: list[dict[str, Any]], batch_size: int, seed: int,
                    collate: Callable[[list[dict[str, Any]]], Any]) -> Iterator[Any]:
    """Length-grouped batches of encoded rows, reshuffled every epoch from the seed, forever."""
    lengths = [len(r["input_ids"]) for r in rows]
    rng = np.random.default_rng(seed)
    while True:
        for idx in length_grouped_batches(lengths, batch_size, rng):
            yield collate([rows[j] for j in idx])


def special_affixes(tok: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after one text (Llama's BOS, T5's EOS, BART's both)."""
    bare = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if bare and full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    return [], []


def pad(seqs: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    """Sequences padded to one width, a multiple of PAD_MULTIPLE (few shapes for the FLOP cache)."""
    width = max(PAD_MULTIPLE, -(-max(len(s) for s in seqs) // PAD_MULTIPLE) * PAD_MULTIPLE)
    return torch.tensor([[value] * (width - len(s)) + s if left else s + [value] * (width - len(s)) for s in seqs])


def choice_logprobs(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens (labels != -100), and their count.

    shift: a decoder's logits at position t predict token t+1 (so labels move one left);
    a seq2seq decoder's logits are aligned with its labels already.
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    picked = logits[mask].float()  # [tokens, vocab]: only the scored positions (saves memory)
    target = labels[mask]
    lp = picked.gather(-1, target[:, None]).squeeze(-1) - picked.logsumexp(-1)
    rows = mask.nonzero()[:, 0]
    sums = torch.zeros(labels.shape[0], dtype=lp.dtype, device=lp.device).index_add_(0, rows, lp)
    return sums, mask.sum(-1)


def position_limit(tok: Any, config: Any) -> int | None:
    """How many tokens the model takes, or None when it does not say (relative positions)."""
    limits = []
    n = getattr(tok, "model_max_length", None)
    if isinstance(n, int) and 0 < n < 1_000_000:  # unset tokenizers report a huge number
        limits.append(n)
    pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(pos, int) and pos > 0 and getattr(config, "position_biased_input", True):
        if getattr(config, "model_type", "") in PADDING_OFFSET_POSITIONS:
            pos -= (getattr(config, "pad_token_id", None) or 0) + 1
        limits.append(pos)
    return min(limits) if limits else None


def fit_max_length(task: TaskSpec, model_name: str, tok: Any, config: Any, extra: int = 0) -> int:
    """The input truncation length: the configured one, which the model must be able to take.

    An explicit max_length beyond the model's positions is refused (it would fail mid-run on
    the first long text); the default is lowered to the model's limit instead. `extra`: tokens
    that share the window (a decoder's target).
    """
    limit = position_limit(tok, config)
    want = task.max_length
    if limit is None or want + extra <= limit:
        return want
    if "max_length" in task.model_fields_set:
        raise UserError(
            f"max length {want}{f' plus {extra} target tokens' if extra else ''} is more than model "
            f"'{model_name}' takes ({limit} tokens); pass --max-length {max(limit - extra, 8)} or less"
        )
    return max(limit - extra, 8)


def load_text_model_config(task: Any, spec: ModelSpec) -> tuple[Any, Any]:
    """Tokenizer and config of a text model, after refusing a family the task cannot use."""
    config = models.load_pretrained(AutoConfig, spec)
    task.check_family(models.family(config), spec.name)
    tok = models.load_pretrained(AutoTokenizer, spec)
    if tok.pad_token is None:  # GPT-2-like tokenizers have none; padding is masked anyway
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if tok.pad_token is None:
        raise UserError(f"model '{spec.name}' has a tokenizer with no pad, eos or unk token to pad with")
    return tok, config
