"""Multiple choice: pick one of a fixed number of answers to a question (optionally about a text).

Encoders get AutoModelForMultipleChoice: each example becomes `num_choices` pairs
(context + question, choice) scored by a new one-output classifier, trained with
cross-entropy over the choices.

Decoders and seq2seq models keep their own LM head and score each choice by its
length-normalized log-likelihood (the mean log-probability of the choice's tokens)
after the prompt "[context] Question: ... Answer:"; the prediction is the best-scored
choice. Training is the LM loss on the correct choice's tokens only (prompt masked).

Rows hold a question, the choices (a list of strings, or CommonsenseQA's
{"label": [...], "text": [...]}), the answer (a choice label such as "A", a 0-based
index, or the choice's text) and optionally a context (RACE's article). Every example
must have the same number of choices (AutoModelForMultipleChoice scores a fixed number).
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterator
from pathlib import Path
from string import ascii_uppercase
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForMultipleChoice, AutoModelForSeq2SeqLM, DataCollatorWithPadding

from peftbench import models
from peftbench.config import ModelSpec
from peftbench.errors import UserError
from peftbench.metrics import score_metric
from peftbench.models import load_pretrained
from peftbench.tasks import register
from peftbench.tasks.base import PREDICT, Batch, EvalResult, Progress, Task
from peftbench.tasks.sources import SPLITS, builtin_columns, load_splits
from peftbench.tasks.text import (  # noqa: F401  (choice_logprobs: re-exported)
    PAD_MULTIPLE, choice_logprobs, fit_max_length, length_grouped_batches, load_text_model_config, pad, position_limit,
    special_affixes,
)

# Column names looked for, in order, when neither the config nor the built-in data names one.
ALTERNATES = {
    "question": ("question",),
    "choices": ("choices", "options", "endings"),
    "answer": ("answerKey", "answer", "label"),
    "text": ("article", "context"),  # optional
}
ANSWER_CUE = "Answer:"
DEFAULT_PROMPT = "{input}\n" + ANSWER_CUE  # {input}: [context, newline] "Question: ..."
EXCERPT = 160  # characters of question / context shown by example()


def letter(i: int) -> str:
    return ascii_uppercase[i] if i < 26 else str(i)


def _short(text: str, n: int = EXCERPT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


@register
class MultipleChoice(Task):
    kind = "multiple_choice"
    summary = (
        "Pick the answer among fixed choices (CommonsenseQA, RACE, ARC...): a choice classifier on encoders, "
        "length-normalized log-likelihood of each choice on decoders and seq2seq"
    )
    families = ("encoder", "decoder", "seq2seq")
    metrics = ("accuracy",)
    select_metric = "accuracy"
    default_columns = {"question": "question", "choices": "choices", "answer": "answerKey"}

    num_choices: int
    splits: dict[str, dict[str, list[Any]]]  # split -> question / context / choices / answer -> values

    def __init__(self, spec: Any, model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(spec, model_kwargs)
        self._columns: list[str] = []

    # -- data ------------------------------------------------------------------------

    def column(self, role: str) -> str | None:
        """Config, then built-in data, then the first of ALTERNATES present in train, then the default."""
        explicit = getattr(self.spec.data, f"{role}_column", None) or builtin_columns(self.spec.data).get(role)
        if explicit:
            return explicit
        found = next((c for c in ALTERNATES.get(role, ()) if c in self._columns), None)
        return found or self.default_columns.get(role)

    def load_data(self) -> None:
        dd = load_splits(self.spec.data)
        self._columns = list(dd["train"].column_names)
        self.require_columns({s: list(dd[s].column_names) for s in SPLITS}, ["question", "choices", "answer", "text"])
        q_col, c_col, a_col, t_col = (self.column(r) for r in ("question", "choices", "answer", "text"))
        self.splits = {}
        for split in SPLITS:
            ds = dd[split]
            questions = list(ds[q_col])
            raw_choices = list(ds[c_col])
            answers = list(ds[a_col])
            contexts = list(ds[t_col]) if t_col else None
            cols: dict[str, list[Any]] = {"question": [], "context": [], "choices": [], "answer": []}
            for i in range(len(ds)):
                where = f"{split} row {i + 1}"
                question = self._text(questions[i], where, "question", q_col, required=True)
                context = self._text(contexts[i], where, "context", t_col, required=False) if contexts else ""
                texts, labels = self._choices(raw_choices[i], where, c_col)
                if split == "train" and i == 0:  # train comes first: its first row sets the count
                    self.num_choices, self._first = len(texts), where
                if len(texts) != self.num_choices:
                    raise UserError(
                        f"every example needs the same number of choices: {self._first} has {self.num_choices}, "
                        f"{where} ({_short(question, 60)!r}) has {len(texts)}; drop those rows or pad their "
                        "choices to one count (a multiple-choice model scores a fixed number of choices)"
                    )
                cols["question"].append(question)
                cols["context"].append(context)
                cols["choices"].append(texts)
                cols["answer"].append(self._answer(answers[i], texts, labels, where, a_col))
            self.splits[split] = cols

    def input_columns(self) -> dict[str, str]:
        roles = ("question", "choices", "text") if self.column("text") else ("question", "choices")
        return {r: self.column(r) for r in roles}

    def predict_split(self, rows: list[dict[str, Any]], root: Path | None = None) -> dict[str, list[Any]]:
        cols = self.input_columns()
        split: dict[str, list[Any]] = {"question": [], "context": [], "choices": [], "answer": []}
        for i, r in enumerate(rows):
            where = f"{PREDICT} row {i + 1}"
            texts, _ = self._choices(r.get(cols["choices"]), where, cols["choices"])
            if len(texts) != self.num_choices:  # the model scores a fixed number, as trained
                raise UserError(f"{where} has {len(texts)} choices; this run scores {self.num_choices} per question")
            split["question"].append(self._text(r.get(cols["question"]), where, "question", cols["question"], required=True))
            split["context"].append(self._text(r.get(cols["text"]), where, "context", cols["text"], required=False)
                                    if "text" in cols else "")
            split["choices"].append(texts)
            split["answer"].append(0)  # a placeholder; score=False ignores it
        return split

    @staticmethod
    def _text(value: Any, where: str, role: str, col: str, required: bool) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = ""
        if not isinstance(value, str):
            raise UserError(f"{role} column '{col}' in {where} holds {value!r}, not text; pick the right column")
        if required and not value.strip():
            raise UserError(f"{role} column '{col}' in {where} is empty; fill or drop that row")
        return value

    @staticmethod
    def _choices(value: Any, where: str, col: str) -> tuple[list[str], list[str]]:
        """(choice texts, their labels): a list of strings, {"label": [...], "text": [...]} or such a list as text."""
        if isinstance(value, str) and value.strip()[:1] in "[{":  # a list written into a CSV cell
            for parse in (json.loads, ast.literal_eval):
                try:
                    value = parse(value)
                    break
                except (ValueError, SyntaxError):
                    continue
        labels: list[str] | None = None
        if isinstance(value, dict):
            texts = value.get("text")
            if value.get("label") is not None:
                labels = [str(x) for x in value["label"]]
        else:
            texts = value
        if isinstance(texts, (tuple, np.ndarray)):
            texts = list(texts)
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise UserError(
                f"choices column '{col}' in {where} holds {_short(repr(value), 80)}; give a list of choice texts "
                "or an object {\"label\": [...], \"text\": [...]} (pass the right --column choices=NAME)"
            )
        if len(texts) < 2:
            raise UserError(f"{where} has {len(texts)} choice(s); multiple choice needs at least 2 per example")
        empty = next((j for j, t in enumerate(texts) if not t.strip()), None)
        if empty is not None:
            raise UserError(f"choice {empty + 1} of {where} is empty; give every choice some text")
        if labels is None or len(labels) != len(texts):
            labels = [letter(j) for j in range(len(texts))]
        return texts, labels

    @staticmethod
    def _answer(value: Any, texts: list[str], labels: list[str], where: str, col: str) -> int:
        """The answer's 0-based index: from a label ("A"), a 0-based index, or the choice's text."""
        if isinstance(value, float) and not math.isnan(value) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value < len(texts):
                return value
        elif isinstance(value, str):
            v = value.strip()
            stripped = [t.strip() for t in texts]
            for key, candidates in ((v, labels), (v, stripped), (v.lower(), [x.lower() for x in labels]),
                                    (v.lower(), [x.lower() for x in stripped])):
                if key in candidates:
                    return candidates.index(key)
            if v.isdigit() and int(v) < len(texts):  # HellaSwag's "0".."3"
                return int(v)
        shown = "empty" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(value)
        raise UserError(
            f"answer column '{col}' in {where} is {shown}, which matches no choice (labels {', '.join(labels)}, "
            f"an index 0-{len(texts) - 1}, or a choice's text); fix the answer or pass the right --column answer=NAME"
        )

    @property
    def train_size(self) -> int:
        return len(self.splits["train"]["answer"])

    # -- model -----------------------------------------------------------------------

    def load_model(self, spec: ModelSpec) -> tuple[nn.Module, Any]:
        tok, config = load_text_model_config(self, spec)  # refuses other families; pad = eos where none
        tok.padding_side = "right"
        self.tokenizer = tok
        # A decoder reads prompt + choice in one window: the longest choice (up to
        # max_target_length tokens) shares the model's positions with the prompt.
        self.max_target_length = self.spec.max_target_length
        if self.family == "decoder":
            self.max_target_length = min(self.max_target_length, self._longest_choice())
        extra = self.max_target_length if self.family == "decoder" else 0
        self.max_length = fit_max_length(self.spec, spec.name, tok, config, extra=extra)
        self.context_window = position_limit(tok, config)
        if self.family == "encoder":
            model, self.head_modules = models.load_with_new_modules(  # new head
                AutoModelForMultipleChoice, spec, ignore_mismatched_sizes=True, **self.model_kwargs)
            self.peft_task_type = None  # peft has no multiple-choice task type
        elif self.family == "decoder":
            model = load_pretrained(AutoModelForCausalLM, spec, **self.model_kwargs)
            self.peft_task_type, self.head_modules = "CAUSAL_LM", []
        else:
            model = load_pretrained(AutoModelForSeq2SeqLM, spec, **self.model_kwargs)
            self.peft_task_type, self.head_modules = "SEQ_2_SEQ_LM", []
            start = model.config.decoder_start_token_id
            if start is None:
                start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
            self._decoder_start = start if start is not None else tok.pad_token_id
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id
        self._specials = special_affixes(tok)
        self._encoded: dict[str, list[dict[str, Any]]] = {}
        self._collate = DataCollatorWithPadding(tok, pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt")
        return model, tok

    # -- encoding --------------------------------------------------------------------

    def _longest_choice(self) -> int:
        """Tokens of the longest choice in any split (as it follows the answer cue)."""
        longest = 1
        for cols in self.splits.values():
            texts = sorted({t for choices in cols["choices"] for t in choices}, key=len, reverse=True)[:256]
            longest = max([longest, *(len(ids) for ids in self._answer_ids(texts))])
        return longest

    def prompt(self, split: str, i: int) -> str:
        """The text a decoder or seq2seq model reads before the answer (task.prompt, else DEFAULT_PROMPT)."""
        cols = self.splits[split]
        context = cols["context"][i].strip()
        question = f"Question: {cols['question'][i].strip()}"
        text = (self.spec.prompt or DEFAULT_PROMPT).replace("{input}", f"{context}\n{question}" if context else question)
        return getattr(self, "_demo_text", "") + text

    def demonstrate(self, k: int, seed: int) -> dict[str, Any]:
        """Few-shot: k solved training questions before every prompt (decoder and seq2seq scoring)."""
        if self.family == "encoder":
            return super().demonstrate(k, seed)
        cols = self.splits["train"]
        picks = np.random.default_rng(seed).choice(self.train_size, size=min(k, self.train_size), replace=False)
        self._demo_text = "".join(f"{self.prompt('train', i)} {cols['choices'][i][cols['answer'][i]].strip()}\n\n" for i in picks)
        tokens = len(self.tokenizer(self._demo_text, add_special_tokens=False)["input_ids"])
        if tokens >= self.max_length:
            raise UserError(
                f"{len(picks)} demonstrations take {tokens} tokens, more than max length {self.max_length} leaves; "
                "lower the few_shot k or raise --max-length"
            )
        self.demonstrations = {"k": len(picks), "context_tokens": tokens, "max_length": self.max_length,
                               "context_window": self.context_window}
        if self.context_window:
            self.demonstrations["window_share"] = tokens / self.context_window
        self._encoded = {}
        return self.demonstrations

    def _encode(self, split: str) -> list[dict[str, Any]]:
        if split not in self._encoded:
            encode = {"encoder": self._encode_encoder, "decoder": self._encode_decoder, "seq2seq": self._encode_seq2seq}
            self._encoded[split] = encode[self.family](split)
        return self._encoded[split]

    def _encode_encoder(self, split: str) -> list[dict[str, Any]]:
        """Per example: `num_choices` pairs (context or question, [question +] choice), labels = answer index."""
        cols, c = self.splits[split], self.num_choices
        firsts, seconds = [], []
        for q, ctx, choices in zip(cols["question"], cols["context"], cols["choices"]):
            for choice in choices:
                firsts.append(ctx if ctx.strip() else q)
                seconds.append(f"{q} {choice}" if ctx.strip() else choice)
        side = self.tokenizer.truncation_side
        self.tokenizer.truncation_side = "left"  # keep the end of a long context / question
        try:
            enc = self.tokenizer(firsts, seconds, truncation="longest_first", max_length=self.max_length)
        finally:
            self.tokenizer.truncation_side = side
        keys = [k for k in enc.keys() if k in ("input_ids", "attention_mask", "token_type_ids")]
        return [
            {"choices": [{k: enc[k][i * c + j] for k in keys} for j in range(c)], "answer": y}
            for i, y in enumerate(cols["answer"])
        ]

    def _answer_ids(self, choices: list[str]) -> list[list[int]]:
        """A decoder's token ids of each choice as it follows "Answer:" (tokenized in place, so BPE joins right)."""
        tok = self.tokenizer
        cue = tok(ANSWER_CUE, add_special_tokens=False)["input_ids"]
        out = []
        for choice, whole in zip(choices, tok([f"{ANSWER_CUE} {c.strip()}" for c in choices], add_special_tokens=False)["input_ids"]):
            ids = whole[len(cue) :] if whole[: len(cue)] == cue else tok(" " + choice.strip(), add_special_tokens=False)["input_ids"]
            out.append(ids or [tok.unk_token_id if tok.unk_token_id is not None else tok.eos_token_id])
        return out

    def _encode_decoder(self, split: str) -> list[dict[str, Any]]:
        """Per example: each choice as prompt + choice tokens, labels on the choice tokens only."""
        tok, cols = self.tokenizer, self.splits[split]
        prefix = self._specials[0]
        prompts = tok([self.prompt(split, i) for i in range(len(cols["answer"]))], add_special_tokens=False)["input_ids"]
        room = max(1, self.max_length - len(prefix))
        c = self.num_choices
        flat = self._answer_ids([t for choices in cols["choices"] for t in choices])  # one tokenizer call
        rows = []
        for i, (p, y) in enumerate(zip(prompts, cols["answer"])):
            answers = [ids[: self.max_target_length] for ids in flat[i * c : (i + 1) * c]]
            p = prefix + p[-room:]  # the same prompt for every choice; its end (the question, "Answer:") kept
            seqs = [{"input_ids": p + a, "labels": [-100] * len(p) + a} for a in answers]
            rows.append({"choices": seqs, "answer": y})
        return rows

    def _encode_seq2seq(self, split: str) -> list[dict[str, Any]]:
        """Per example: the prompt as encoder input, each choice (+ EOS) as decoder labels."""
        tok, cols = self.tokenizer, self.splits[split]
        prefix, suffix = self._specials
        eos = tok.eos_token_id
        prompts = tok([self.prompt(split, i) for i in range(len(cols["answer"]))], add_special_tokens=False)["input_ids"]
        room = max(1, self.max_length - len(prefix) - len(suffix))
        c = self.num_choices
        flat = tok([t.strip() for choices in cols["choices"] for t in choices], add_special_tokens=True)["input_ids"]
        rows = []
        for i, (p, y) in enumerate(zip(prompts, cols["answer"])):
            source = prefix + p[-room:] + suffix
            seqs = []
            for ids in flat[i * c : (i + 1) * c]:
                skip = len(prefix) if ids[: len(prefix)] == prefix else 0  # BART's <s>: read, not scored
                if not ids or ids[-1] != eos:
                    ids = ids + [eos]
                if len(ids) > self.max_target_length + skip + 1:  # the choice's tokens, plus <s> and </s>
                    ids = ids[: self.max_target_length + skip] + [eos]
                seqs.append({
                    "decoder_input_ids": [self._decoder_start] + ids[:-1],
                    "labels": [-100] * skip + ids[skip:],
                })
            rows.append({"source": source, "choices": seqs, "answer": y})
        return rows

    def _length(self, row: dict[str, Any]) -> int:
        return max(len(s.get("input_ids", s.get("decoder_input_ids"))) for s in row["choices"]) + len(row.get("source", []))

    # -- batching --------------------------------------------------------------------

    def _lm_batch(self, rows: list[dict[str, Any]], which: list[list[int]]) -> Batch:
        """Sequences of a decoder / seq2seq batch: for each row, the choices listed in `which`."""
        pad_id = self.tokenizer.pad_token_id
        seqs = [(r, r["choices"][j]) for r, js in zip(rows, which) for j in js]
        if self.family == "decoder":
            ids = [s["input_ids"] for _, s in seqs]
            return {
                "input_ids": pad(ids, pad_id),
                "attention_mask": pad([[1] * len(x) for x in ids], 0),
                "labels": pad([s["labels"] for _, s in seqs], -100),
            }
        src = [r["source"] for r, _ in seqs]
        dec = [s["decoder_input_ids"] for _, s in seqs]
        return {
            "input_ids": pad(src, pad_id),
            "attention_mask": pad([[1] * len(x) for x in src], 0),
            "decoder_input_ids": pad(dec, pad_id),
            "decoder_attention_mask": pad([[1] * len(x) for x in dec], 0),
            "labels": pad([s["labels"] for _, s in seqs], -100),
        }

    def _encoder_batch(self, rows: list[dict[str, Any]]) -> Batch:
        """input_ids etc. of shape [batch, num_choices, seq], labels [batch]."""
        flat = self._collate([s for r in rows for s in r["choices"]])
        b, c = len(rows), self.num_choices
        batch = {k: v.view(b, c, -1) for k, v in flat.items()}
        batch["labels"] = torch.tensor([r["answer"] for r in rows])
        return batch

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        rows = self._encode("train")
        lengths = [self._length(r) for r in rows]
        rng = np.random.default_rng(seed)
        while True:
            for idx in length_grouped_batches(lengths, batch_size, rng):
                picked = [rows[j] for j in idx]
                if self.family == "encoder":
                    yield self._encoder_batch(picked)
                else:  # the LM loss on the correct choice only
                    yield self._lm_batch(picked, [[r["answer"]] for r in picked])

    # -- evaluation ------------------------------------------------------------------

    def choice_scores(
        self, model: nn.Module, split: str, batch_size: int, flops: Any = None,
        progress: Progress | None = None, limit: int | None = None,
    ) -> tuple[list[list[float]], list[float]]:
        """Per example (in split order): a score per choice, and the loss of its correct answer.

        Encoder: the classifier's logits and the cross-entropy over the choices. Decoder /
        seq2seq: each choice's mean token log-probability and the correct choice's mean
        token negative log-likelihood. A batch holds at most `batch_size` sequences.
        """
        rows = self._encode(split)
        n = len(rows) if limit is None else min(limit, len(rows))
        c = self.num_choices
        per_batch = max(1, batch_size // c)
        device = next(model.parameters()).device
        order = sorted(range(n), key=lambda i: self._length(rows[i]))  # little padding
        scores: list[list[float]] = [[] for _ in range(n)]
        losses = [0.0] * n
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, n, per_batch):
                    idx = order[start : start + per_batch]
                    picked = [rows[j] for j in idx]
                    if self.family == "encoder":
                        batch = {k: v.to(device) for k, v in self._encoder_batch(picked).items()}
                        labels = batch.pop("labels")
                        out = flops.forward(model, batch) if flops is not None else model(**batch)
                        logits = out.logits.float()
                        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
                        mean = logits
                    else:
                        batch = {k: v.to(device) for k, v in self._lm_batch(picked, [list(range(c))] * len(picked)).items()}
                        labels = batch.pop("labels")  # scored here, so the model computes no loss
                        out = flops.forward(model, batch) if flops is not None else model(**batch)
                        logits = out.logits[:, -labels.shape[1] :]  # prompt tuning puts virtual tokens first
                        sums, counts = choice_logprobs(logits, labels, shift=self.family == "decoder")
                        mean = (sums / counts.clamp(min=1)).view(len(idx), c)
                        truth = torch.tensor([r["answer"] for r in picked], device=mean.device)
                        loss = -mean.gather(1, truth[:, None]).squeeze(1)
                    for j, s, l in zip(idx, mean.tolist(), loss.tolist()):
                        scores[j], losses[j] = s, l
                    if progress:
                        progress(start + len(idx), n)
        finally:
            model.train(was_training)
        return scores, losses

    def evaluate(
        self, model: nn.Module, split: str, batch_size: int, flops: Any = None,
        progress: Progress | None = None, limit: int | None = None, score: bool = True,
    ) -> EvalResult:
        scores, losses = self.choice_scores(model, split, batch_size, flops, progress, limit)
        preds = [int(np.argmax(s)) for s in scores]
        refs = self.splits[split]["answer"][: len(preds)]
        if not score:  # the loss came free with the scores; only the metrics are skipped
            return EvalResult(metrics={}, predictions=preds, references=list(refs), examples=len(preds))
        n = max(len(preds), 1)
        metrics = {"accuracy": score_metric("accuracy", list(refs), preds), "loss": sum(losses) / n}
        return EvalResult(metrics=metrics, predictions=preds, references=list(refs), examples=len(preds))

    # -- display ---------------------------------------------------------------------

    def example(self, split: str, i: int) -> tuple[str, str]:
        cols = self.splits[split]
        context = cols["context"][i]
        options = "  ".join(f"{letter(j)}) {_short(t, 40)}" for j, t in enumerate(cols["choices"][i]))
        head = f"{_short(context, EXCERPT // 2)} | " if context.strip() else ""
        y = cols["answer"][i]
        return f"{head}{_short(cols['question'][i])} | {options}", f"{letter(y)}) {cols['choices'][i][y]}"

    def render(self, prediction: Any) -> str:
        return letter(int(prediction))

    def render_for(self, split: str, i: int, prediction: Any) -> str:
        return self.splits[split]["choices"][i][int(prediction)]

    def describe(self) -> dict[str, Any]:
        family = getattr(self, "family", None)
        return {
            **super().describe(), "num_choices": getattr(self, "num_choices", None),
            "scoring": None if family is None else
            ("classifier over choices" if family == "encoder" else "length-normalized log-likelihood"),
            "columns": {r: self.column(r) for r in ("question", "choices", "answer", "text")},
            "sizes": {s: len(c["answer"]) for s, c in getattr(self, "splits", {}).items()},
            "max_length": getattr(self, "max_length", self.spec.max_length),
        }
