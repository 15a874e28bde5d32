"""A causal or seq2seq LM's cross-entropy over chunks of positions: full-vocabulary logits never exist at once.

The model runs with its LM head swapped for the identity, so its "logits" are the hidden states the head
reads; the head is then applied CHUNK positions at a time. In training, each chunk's gradients (for the
hidden states, and for the head's weight when it trains) are computed right there and its logits freed,
so backward recomputes nothing. Those gradient matmuls count as backward FLOPs (flops.counted_as), and
every position is projected as the unchunked head projects it, so measured FLOPs (forward and backward)
equal the unchunked ones.

Without gradients (evaluation), the model also runs on groups of rows (row_groups), so attention
scores and activations never exist for a whole evaluation batch of 64 long rows either.

Where the head is not a plain nn.Linear (a LoRA or modules_to_save wrapper on lm_head), training takes the
plain `model(**batch).loss` path, while scoring and evaluation (no gradients) call the wrapper chunk by chunk.
Where the model changes its logits after the head (soft-capping, logit scaling), the model's own logits
are used, for groups of rows of at most CHUNK positions.
Prompt tuning's virtual tokens come first in the output: they get no label, as peft gives them none.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftbench.measure.flops import counted_as

CHUNK = 512  # positions per chunk: 512 x 49152 fp32 logits (SmolLM2) is 100 MB
EVAL_POSITIONS = 8192  # positions per model pass without gradients (row_groups)
ENABLED = True  # off: the plain path everywhere (benchmarks/lm_memory.py compares the two)
IGNORE = -100
_LOGIT_CHANGES = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # applied after the head


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP and peft wrappers."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lm_head(model: nn.Module, wrapped: bool = False) -> tuple[nn.Module, nn.Module, bool] | None:
    """(the transformers model, its LM head, whether it is seq2seq), or None when chunking cannot apply.

    The head is a plain nn.Linear, or with `wrapped` (no gradients) any module (a peft wrapper) whose
    forward maps hidden states to logits."""
    base = base_model(model)
    name = type(base).__name__
    seq2seq = bool(getattr(base.config, "is_encoder_decoder", False))
    if not ENABLED or not (seq2seq or name.endswith(("ForCausalLM", "LMHeadModel"))):
        return None
    head = base.get_output_embeddings()
    if not isinstance(head, nn.Module) or (type(head) is not nn.Linear and not wrapped):
        return None
    if any(getattr(base.config, k, None) not in (None, 1, 1.0) for k in _LOGIT_CHANGES):
        return None
    return base, head, seq2seq


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@contextmanager
def _headless(base: nn.Module, head: nn.Module) -> Iterator[torch.Tensor | None]:
    """The model's forward returns hidden states as its logits; yields the bias added after the head (BART's)."""
    bias = base._buffers.get("final_logits_bias")
    head.forward = _identity  # type: ignore[method-assign]  # an instance attribute, deleted after
    if bias is not None:  # (1, vocab) added to the logits: a zero broadcasts over hidden states instead
        base._buffers["final_logits_bias"] = bias.new_zeros(1, 1)
    try:
        yield None if bias is None else bias[0]
    finally:
        del head.forward
        if bias is not None:
            base._buffers["final_logits_bias"] = bias


def hidden_states(model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor,
                  found: tuple[nn.Module, nn.Module, bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(hidden [N, H], labels aligned with them [N], the head's extra bias): a causal LM's labels move one left."""
    base, head, seq2seq = found
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inputs = no_cache(model, inputs)
    if seq2seq and "decoder_input_ids" not in inputs:
        inputs["decoder_input_ids"] = base.prepare_decoder_input_ids_from_labels(labels=labels)
    with _headless(base, head) as extra_bias:
        hidden = model(**inputs).logits
    if not seq2seq:
        labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    labels = F.pad(labels, (hidden.shape[1] - labels.shape[1], 0), value=IGNORE)  # virtual tokens: no label
    return hidden.flatten(0, 1), labels.flatten(), extra_bias


def _takes_use_cache(base: nn.Module) -> bool:
    return "use_cache" in inspect.signature(base.forward).parameters


def no_cache(model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs with use_cache=False where the model takes it: a decoder's config usually turns the cache
    on, and a loss or scoring pass would keep every layer's keys and values to the end of the pass for nothing."""
    return {"use_cache": False, **inputs} if _takes_use_cache(base_model(model)) else inputs


def summed_nll(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module, extra_bias: torch.Tensor | None) -> torch.Tensor:
    """The summed NLL of labelled positions from hidden_states' output, the head applied CHUNK positions at a time."""
    project = _projection(head, extra_bias)
    total = torch.zeros((), device=hidden.device)
    for s in range(0, len(labels), CHUNK):
        total = total + _chunk_nll(project(hidden[s : s + CHUNK]), labels[s : s + CHUNK])[2].sum()
    return total


def _chunk_nll(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 logits of one chunk, their logsumexp, and each position's negative log-likelihood (0 where unlabelled)."""
    logits = logits.float()
    lse = logits.logsumexp(-1)
    picked = logits.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
    return logits, lse, (lse - picked) * (y != IGNORE)


class _ChunkedCE(torch.autograd.Function):
    """Summed token NLL; the gradients are computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor, chunk: int, grad_enabled: bool) -> torch.Tensor:
        # needs_input_grad follows requires_grad even under no_grad/inference mode: the caller's mode decides
        need_h, need_w, need_b = ctx.needs_input_grad[:3] if grad_enabled else (False, False, False)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros(weight.shape[0], device=weight.device) if need_b else None
        total = torch.zeros((), device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s : s + chunk], labels[s : s + chunk]
            logits, lse, nll = _chunk_nll(F.linear(h, weight, bias), y)
            total += nll.sum()
            if need_h or need_w or need_b:
                with counted_as("backward"):  # what autograd's backward of the head would have run
                    g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    g[torch.arange(len(y), device=y.device), y.clamp(min=0)] -= 1
                    g *= (y != IGNORE)[:, None]
                    g = g.to(h.dtype)
                    if grad_h is not None:
                        grad_h[s : s + chunk] = g @ weight
                    if grad_w is not None:
                        grad_w += (g.t() @ h).float()
                    if grad_b is not None:
                        grad_b += g.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = [None if g is None else (g * grad_out).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None)


def _bias(head: nn.Linear, extra: torch.Tensor | None) -> torch.Tensor | None:
    """The head's own bias plus any the model adds after it."""
    if extra is None or head.bias is None:
        return head.bias if extra is None else extra
    return head.bias + extra


def _projection(head: nn.Module, extra: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hidden states to logits as the model computes them: the head's own forward (a peft wrapper's too;
    _headless replaced it on the instance only), then any bias the model adds after it."""
    if type(head) is nn.Linear:
        bias = _bias(head, extra)
        return lambda h: F.linear(h, head.weight, bias)
    forward = type(head).forward
    return lambda h: forward(head, h) if extra is None else forward(head, h) + extra


def row_groups(batch: dict[str, torch.Tensor], rows: int, positions: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Without gradients (or when `positions` is given), the batch in groups of rows of at most
    EVAL_POSITIONS (or `positions`) positions: every row is scored alone, so the sum over groups is the
    batch's, and attention scores and MLP activations exist for one group at a time (most of what is
    left of an evaluation pass's memory)."""
    width = next(iter(batch.values())).shape[-1]
    if positions is None and not torch.is_grad_enabled():
        positions = EVAL_POSITIONS
    step = rows if positions is None else max(1, positions // width)
    for s in range(0, rows, step):
        yield {k: v[s : s + step] for k, v in batch.items()}


def loss_and_output(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """The batch's mean token loss, as model(**batch).loss gives it, and the model's output
    (None when the loss was chunked: there are no logits then)."""
    labels = batch.get("labels")
    found = lm_head(model) if labels is not None and labels.dim() == 2 else None
    if found is None and labels is not None and labels.dim() == 2 and not torch.is_grad_enabled():
        scored = lm_head(model, wrapped=True)  # a wrapped head: called chunk by chunk
        if scored is not None:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            sums, counts = _scored_logprobs(model, inputs, labels, scored)
            return -sums.sum() / counts.sum(), None
    if found is None:
        out = model(**no_cache(model, batch))
        return out.loss, out
    totals, counts = [], []  # tensors: reading a count here would wait for the GPU
    ce: Any = _ChunkedCE
    for part in row_groups(batch, labels.shape[0]):
        hidden, flat, bias = hidden_states(model, part, part["labels"], found)
        totals.append(ce.apply(hidden, found[1].weight, _bias(found[1], bias), flat, CHUNK, torch.is_grad_enabled()))
        counts.append((flat != IGNORE).sum())
    return torch.stack(totals).sum() / torch.stack(counts).sum(), None


def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return loss_and_output(model, batch)[0]


def logprobs(model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor,
             seq2seq: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens and their count (no gradient).

    Log-softmax runs over CHUNK positions at a time; the whole [rows, length, vocab] logits never exist."""
    found = lm_head(model, wrapped=True)
    if found is None:
        return _model_logprobs(model, batch, labels, seq2seq)
    return _scored_logprobs(model, batch, labels, found)


def _scored_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor,
                     found: tuple[nn.Module, nn.Module, bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """logprobs() from the hidden states, the head applied per chunk of positions."""
    sums = []
    for part in row_groups({**batch, "labels": labels}, labels.shape[0]):
        hidden, flat, bias = hidden_states(model, part, part["labels"], found)
        project = _projection(found[1], bias)
        n = part["labels"].shape[0]
        rows = torch.arange(n, device=flat.device).repeat_interleave(len(flat) // n)
        part_sums = torch.zeros(n, device=flat.device)
        for s in range(0, len(flat), CHUNK):
            nll = _chunk_nll(project(hidden[s : s + CHUNK]), flat[s : s + CHUNK])[2]
            part_sums.index_add_(0, rows[s : s + CHUNK], -nll)
        sums.append(part_sums)
    return torch.cat(sums), (labels != IGNORE).sum(-1)


def _model_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor,
                    seq2seq: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """logprobs() from the model's own logits (it changes them after the head), for groups of rows of at
    most CHUNK positions: only one group's logits exist at a time."""
    from peftbench.tasks.text import choice_logprobs

    sums, counts = [], []
    for part in row_groups({**batch, "labels": labels}, labels.shape[0], positions=CHUNK):
        part_labels = part.pop("labels")
        if seq2seq and "decoder_input_ids" not in part:  # as hidden_states builds them
            part["decoder_input_ids"] = base_model(model).prepare_decoder_input_ids_from_labels(labels=part_labels)
        logits = model(**no_cache(model, part)).logits[:, -part_labels.shape[1] :]  # prompt tuning puts virtual tokens first
        s, c = choice_logprobs(logits, part_labels, shift=not seq2seq)
        sums.append(s)
        counts.append(c)
    return torch.cat(sums), torch.cat(counts)
