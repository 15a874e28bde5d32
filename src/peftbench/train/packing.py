"""Padding-free sequence packing for decoder training (`train.packing`, issue 13 item 5).

A micro-batch's examples (the same ones the padded batch would hold) go first-fit-decreasing into
as few rows of the decoder's window as they fit. Position ids restart per example, and a 4D additive
mask (block-diagonal and causal) keeps attention inside each example: transformers passes a 4D mask
through as it is, to SDPA and eager attention alike, on CPU and GPU. Its position-id-only packed path
(no mask) is skipped whenever a KV cache exists, which decoders make by default, so it is not used.
Each example's first label is dropped (its prompt's first token; nothing before it in the row may
predict it), so the loss is the padded batch's, over real tokens only. Padding after a row's last
example attends to the row's first token only: never to itself, so Task.batch_tokens counts it out.
"""

from __future__ import annotations

from typing import Any

import torch

from peftbench.errors import UserError
from peftbench.tasks.text import PAD_MULTIPLE

IGNORE = -100
UNPACKABLE_METHODS = ("prefix", "prompt", "p_tuning")  # virtual tokens or a KV prefix per row, not per example


def require(family: str, task: Any, method_name: str) -> None:
    """Refuse, in one line, packing where it cannot be correct."""
    from peftbench.tasks.generation import GenerationTask

    if family != "decoder":
        raise UserError(f"train.packing needs a decoder-only model (this one is {family}: its examples cannot share "
                        "a row); drop --packing")
    if not isinstance(task, GenerationTask):
        raise UserError(f"train.packing applies to text generation tasks (summarization, table_to_text), not "
                        f"'{task.kind}'; drop --packing")
    if method_name in UNPACKABLE_METHODS:
        raise UserError(f"method '{method_name}' puts virtual tokens before each row, which packed examples "
                        "would share; drop --packing or use another method")


def rows_of(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of the examples in each row: first-fit decreasing, rows of at most `capacity` tokens."""
    bins: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((b for b, u in enumerate(used) if u + lengths[i] <= capacity), None)
        if fit is None:
            bins.append([])
            used.append(0)
            fit = len(bins) - 1
        bins[fit].append(i)
        used[fit] += lengths[i]
    return bins


def pack(rows: list[dict[str, list[int]]], capacity: int, pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, labels, position_ids and a [rows, 1, width, width] additive attention mask."""
    bins = rows_of([len(r["input_ids"]) for r in rows], capacity)
    longest = max(sum(len(rows[i]["input_ids"]) for i in b) for b in bins)
    width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    positions = torch.zeros_like(ids)
    mask = torch.full((len(bins), 1, width, width), torch.finfo(torch.float32).min)
    for r, b in enumerate(bins):
        off = 0
        for i in b:
            n = len(rows[i]["input_ids"])
            ids[r, off : off + n] = torch.tensor(rows[i]["input_ids"])
            labels[r, off + 1 : off + n] = torch.tensor(rows[i]["labels"][1:])
            positions[r, off : off + n] = torch.arange(n)
            mask[r, 0, off : off + n, off : off + n].triu_(1)  # zero (attend) on and below the diagonal
            off += n
        mask[r, 0, off:, 0] = 0.0  # padding: the row's first token only, so its attention is never empty
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask}

