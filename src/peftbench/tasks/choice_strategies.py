"""How multiple choice encodes and scores the choices on each kind of model.

Encoders get AutoModelForMultipleChoice: each example becomes `num_choices` pairs
(context + question, choice) scored by a new one-output classifier, trained with
cross-entropy over the choices.

Decoders and seq2seq models keep their own LM head and score each choice by its
length-normalized log-likelihood (the mean log-probability of the choice's tokens)
after the prompt "[context] Question: ... Answer:"; the prediction is the best-scored
choice. Training is the LM loss on the correct choice's tokens only (prompt masked).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from transformers import AutoModelForMultipleChoice, DataCollatorWithPadding

from peftbench import models
from peftbench.config import ModelSpec
from peftbench.measure.flops import FlopMeter
from peftbench.tasks.base import Batch
from peftbench.tasks.families import LM_FAMILIES, LMFamily, Strategies
from peftbench.tasks.text import PAD_MULTIPLE, pad
from peftbench.train import lm_loss

if TYPE_CHECKING:
    from peftbench.tasks.multiple_choice import MultipleChoice

ANSWER_CUE = "Answer:"
Row = dict[str, Any]


class ChoiceStrategy(ABC):
    """Loads the model for a multiple-choice task, encodes its rows and scores every choice."""

    scoring: ClassVar[str]  # how choices are scored, as describe() says
    reads_demonstrations: ClassVar[bool] = True

    def __init__(self, task: MultipleChoice) -> None:
        self.task = task

    def target_length(self) -> int:
        """Tokens a choice may take."""
        return self.task.spec.max_target_length

    def window_extra(self) -> int:
        """Tokens of the model's window a choice takes beside the prompt."""
        return 0

    @abstractmethod
    def load(self, spec: ModelSpec) -> nn.Module:
        """The model; sets the task's peft_task_type and head_modules."""

    @abstractmethod
    def encode(self, split: str) -> list[Row]: ...

    @abstractmethod
    def train_batch(self, rows: list[Row]) -> Batch: ...

    @abstractmethod
    def score(self, model: nn.Module, rows: list[Row], meter: FlopMeter, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows, choices] scores and [rows] losses of the correct answers."""

    def pieces(self, batch: Batch, batch_size: int) -> list[tuple[Batch, float]]:
        """A training batch's forward passes (see Task.pieces): one, as a row trains one sequence."""
        return [(batch, 1.0)]


class ChoiceClassifier(ChoiceStrategy):
    """Encoders: a new classifier over (context or question, [question +] choice) pairs."""

    scoring = "classifier over choices"
    reads_demonstrations = False

    def load(self, spec: ModelSpec) -> nn.Module:
        t = self.task
        model, t.head_modules = models.load_with_new_modules(  # new head
            AutoModelForMultipleChoice, spec, ignore_mismatched_sizes=True, **t.model_kwargs)
        t.peft_task_type = None  # peft has no multiple-choice task type
        self._collate = DataCollatorWithPadding(t.tokenizer, pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt")
        return model

    def encode(self, split: str) -> list[Row]:
        """Per example: `num_choices` pairs (context or question, [question +] choice), labels = answer index."""
        t = self.task
        cols, c, tok = t.splits[split], t.num_choices, t.tokenizer
        firsts, seconds = [], []
        for q, ctx, choices in zip(cols["question"], cols["context"], cols["choices"]):
            for choice in choices:
                firsts.append(ctx if ctx.strip() else q)
                seconds.append(f"{q} {choice}" if ctx.strip() else choice)
        side = tok.truncation_side
        tok.truncation_side = "left"  # keep the end of a long context / question
        try:
            enc = tok(firsts, seconds, truncation="longest_first", max_length=t.max_length)
        finally:
            tok.truncation_side = side
        keys = [k for k in enc.keys() if k in ("input_ids", "attention_mask", "token_type_ids")]
        return [
            {"choices": [{k: enc[k][i * c + j] for k in keys} for j in range(c)], "answer": y}
            for i, y in enumerate(cols["answer"])
        ]

    def train_batch(self, rows: list[Row]) -> Batch:
        """input_ids etc. of shape [batch, num_choices, seq], labels [batch]."""
        flat = self._collate([s for r in rows for s in r["choices"]])
        b, c = len(rows), self.task.num_choices
        batch = {k: v.view(b, c, -1) for k, v in flat.items()}
        batch["labels"] = torch.tensor([r["answer"] for r in rows])
        return batch

    def pieces(self, batch: Batch, batch_size: int) -> list[tuple[Batch, float]]:
        """Every question trains all its choices: a batch of `batch_size` questions runs as passes of at
        most `batch_size` sequences (batch_size // choices questions each), its gradients accumulated, so
        the choices do not multiply the peak memory. Each pass's mean loss weighs by its share of questions."""
        rows = batch["labels"].shape[0]
        per = max(1, batch_size // self.task.num_choices)
        if rows <= per:
            return [(batch, 1.0)]
        return [({k: v[i : i + per] for k, v in batch.items()}, min(per, rows - i) / rows) for i in range(0, rows, per)]

    def score(self, model: nn.Module, rows: list[Row], meter: FlopMeter, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {k: v.to(device) for k, v in self.train_batch(rows).items()}
        labels = batch.pop("labels")
        logits = meter.forward(model, batch).logits.float()
        return logits, torch.nn.functional.cross_entropy(logits, labels, reduction="none")


class LMChoiceScorer(ChoiceStrategy):
    """Decoders and seq2seq: each choice's mean token log-probability under the model's own LM head."""

    scoring = "length-normalized log-likelihood"
    lm: ClassVar[LMFamily]

    def load(self, spec: ModelSpec) -> nn.Module:
        t = self.task
        model = models.load_pretrained(self.lm.auto, spec, **t.model_kwargs)
        t.peft_task_type, t.head_modules = self.lm.peft_task_type, []
        return model

    @abstractmethod
    def batch(self, rows: list[Row], which: list[list[int]]) -> Batch:
        """Sequences of a batch: for each row, the choices listed in `which`."""

    def train_batch(self, rows: list[Row]) -> Batch:
        return self.batch(rows, [[r["answer"]] for r in rows])  # the LM loss on the correct choice only

    def score(self, model: nn.Module, rows: list[Row], meter: FlopMeter, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.task.num_choices
        batch = {k: v.to(device) for k, v in self.batch(rows, [list(range(c))] * len(rows)).items()}
        labels = batch.pop("labels")  # scored here, so the model computes no loss
        with meter.count(batch):
            sums, counts = lm_loss.logprobs(model, batch, labels, self.lm.encoder_decoder)
        mean = (sums / counts.clamp(min=1)).view(len(rows), c)
        truth = torch.tensor([r["answer"] for r in rows], device=mean.device)
        return mean, -mean.gather(1, truth[:, None]).squeeze(1)

    def prompts(self, split: str) -> list[list[int]]:
        t = self.task
        return t.tokenizer([t.prompt(split, i) for i in range(len(t.splits[split]["answer"]))],
                           add_special_tokens=False)["input_ids"]


class DecoderChoiceScorer(LMChoiceScorer):
    """A decoder reads prompt + choice in one window: the longest choice (up to
    max_target_length tokens) shares the model's positions with the prompt."""

    lm = LM_FAMILIES["decoder"]

    def target_length(self) -> int:
        return min(self.task.spec.max_target_length, self.longest_choice())

    def window_extra(self) -> int:
        return self.task.max_target_length

    def longest_choice(self) -> int:
        """Tokens of the longest choice in any split (as it follows the answer cue)."""
        longest = 1
        for cols in self.task.splits.values():
            texts = sorted({t for choices in cols["choices"] for t in choices}, key=len, reverse=True)[:256]
            longest = max([longest, *(len(ids) for ids in self.answer_ids(texts))])
        return longest

    def answer_ids(self, choices: list[str]) -> list[list[int]]:
        """Token ids of each choice as it follows "Answer:" (tokenized in place, so BPE joins right)."""
        tok = self.task.tokenizer
        cue = tok(ANSWER_CUE, add_special_tokens=False)["input_ids"]
        out = []
        for choice, whole in zip(choices, tok([f"{ANSWER_CUE} {c.strip()}" for c in choices], add_special_tokens=False)["input_ids"]):
            ids = whole[len(cue) :] if whole[: len(cue)] == cue else tok(" " + choice.strip(), add_special_tokens=False)["input_ids"]
            out.append(ids or [tok.unk_token_id if tok.unk_token_id is not None else tok.eos_token_id])
        return out

    def encode(self, split: str) -> list[Row]:
        """Per example: each choice as prompt + choice tokens, labels on the choice tokens only."""
        t = self.task
        cols, prefix, c = t.splits[split], t._specials[0], t.num_choices
        prompts = self.prompts(split)
        room = max(1, t.max_length - len(prefix))
        flat = self.answer_ids([x for choices in cols["choices"] for x in choices])  # one tokenizer call
        rows = []
        for i, (p, y) in enumerate(zip(prompts, cols["answer"])):
            answers = [ids[: t.max_target_length] for ids in flat[i * c : (i + 1) * c]]
            p = prefix + p[-room:]  # the same prompt for every choice; its end (the question, "Answer:") kept
            seqs = [{"input_ids": p + a, "labels": [-100] * len(p) + a} for a in answers]
            rows.append({"choices": seqs, "answer": y})
        return rows

    def batch(self, rows: list[Row], which: list[list[int]]) -> Batch:
        seqs = [r["choices"][j] for r, js in zip(rows, which) for j in js]
        ids = [s["input_ids"] for s in seqs]
        return {
            "input_ids": pad(ids, self.task.tokenizer.pad_token_id),
            "attention_mask": pad([[1] * len(x) for x in ids], 0),
            "labels": pad([s["labels"] for s in seqs], -100),
        }


class Seq2SeqChoiceScorer(LMChoiceScorer):
    """The prompt as encoder input, each choice (+ EOS) as decoder labels."""

    lm = LM_FAMILIES["seq2seq"]

    def load(self, spec: ModelSpec) -> nn.Module:
        model = super().load(spec)
        start = model.config.decoder_start_token_id
        if start is None:
            start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
        self.decoder_start = start if start is not None else self.task.tokenizer.pad_token_id
        return model

    def encode(self, split: str) -> list[Row]:
        t = self.task
        tok, cols, c = t.tokenizer, t.splits[split], t.num_choices
        prefix, suffix = t._specials
        eos = tok.eos_token_id
        prompts = self.prompts(split)
        room = max(1, t.max_length - len(prefix) - len(suffix))
        flat = tok([x.strip() for choices in cols["choices"] for x in choices], add_special_tokens=True)["input_ids"]
        rows = []
        for i, (p, y) in enumerate(zip(prompts, cols["answer"])):
            source = prefix + p[-room:] + suffix
            seqs = []
            for ids in flat[i * c : (i + 1) * c]:
                skip = len(prefix) if ids[: len(prefix)] == prefix else 0  # BART's <s>: read, not scored
                if not ids or ids[-1] != eos:
                    ids = ids + [eos]
                if len(ids) > t.max_target_length + skip + 1:  # the choice's tokens, plus <s> and </s>
                    ids = ids[: t.max_target_length + skip] + [eos]
                seqs.append({"decoder_input_ids": [self.decoder_start] + ids[:-1], "labels": [-100] * skip + ids[skip:]})
            rows.append({"source": source, "choices": seqs, "answer": y})
        return rows

    def batch(self, rows: list[Row], which: list[list[int]]) -> Batch:
        pad_id = self.task.tokenizer.pad_token_id
        seqs = [(r, r["choices"][j]) for r, js in zip(rows, which) for j in js]
        src = [r["source"] for r, _ in seqs]
        dec = [s["decoder_input_ids"] for _, s in seqs]
        return {
            "input_ids": pad(src, pad_id),
            "attention_mask": pad([[1] * len(x) for x in src], 0),
            "decoder_input_ids": pad(dec, pad_id),
            "decoder_attention_mask": pad([[1] * len(x) for x in dec], 0),
            "labels": pad([s["labels"] for _, s in seqs], -100),
        }


CHOICE_STRATEGIES: Strategies[ChoiceStrategy] = Strategies(
    {"encoder": ChoiceClassifier, "decoder": DecoderChoiceScorer, "seq2seq": Seq2SeqChoiceScorer})
