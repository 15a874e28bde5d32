"""Text classification on every text family.

Encoders and decoders get a sequence-classification head (decoders pool their last
non-pad token, so a pad token is set); seq2seq models are used text-to-text, as T5 is:
they learn to write the label's name, and the generated text is matched to a label.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, DataCollatorWithPadding

from peftbench import models
from peftbench.config import GenerationSpec, ModelSpec
from peftbench.errors import UserError
from peftbench.tasks import register
from peftbench.tasks.base import PREDICT, Batch, EvalResult, Progress, Task
from peftbench.tasks.generation import PairCodec
from peftbench.metrics import classification_metrics
from peftbench.tasks.sources import SPLITS, load_splits
from peftbench.tasks.text import (
    PAD_MULTIPLE, choice_logprobs, endless_batches, fit_max_length, length_grouped_batches, load_text_model_config,
    position_limit,
)

__all__ = ["Classification", "classification_metrics", "length_grouped_batches", "position_limit"]

LABEL_DECODING = GenerationSpec(num_beams=1, no_repeat_ngram_size=0)  # a label name is short: greedy


@register
class Classification(Task):
    kind = "classification"
    summary = "Label a text (or a text pair); accuracy and macro-F1"
    families = ("encoder", "decoder", "seq2seq")
    metrics = ("accuracy", "macro_f1")
    select_metric = "macro_f1"
    default_columns = {"text": "text", "label": "label"}

    labels: list[str]
    splits: dict[str, dict[str, list[Any]]]  # split -> column -> values

    def load_data(self) -> None:
        dd = load_splits(self.spec.data)
        self.require_columns({s: dd[s].column_names for s in SPLITS}, ["text", "label", "text_pair"])
        text_col, label_col, pair_col = self.column("text"), self.column("label"), self.column("text_pair")
        for split in SPLITS:
            odd = next((v for v in dd[split][label_col] if isinstance(v, (list, dict))), None)
            if odd is not None:
                raise UserError(
                    f"label column '{label_col}' in {split} holds lists or objects (e.g. {odd!r}); "
                    "each label must be one string or number"
                )
        self.labels = self._label_names(dd["train"])
        if len(self.labels) < 2:
            raise UserError(
                f"label column '{label_col}' has a single class ({self.labels[0]!r}) in train; "
                "classification needs at least two"
            )
        index = {name: i for i, name in enumerate(self.labels)}
        self.splits = {}
        for split in SPLITS:
            raw = [self._label_str(dd[split], v) for v in list(dd[split][label_col])]
            unknown = sorted({v for v in raw if v not in index})
            if unknown:
                raise UserError(
                    f"{split} split has labels not seen in train: {', '.join(unknown[:5])}; fix the labels or the split"
                )
            cols = {"text": self._texts(dd[split], text_col, split, "text"), "label": [index[v] for v in raw]}
            if pair_col:
                cols["text_pair"] = self._texts(dd[split], pair_col, split, "text pair")
            self.splits[split] = cols

    def input_columns(self) -> dict[str, str]:
        pair = self.column("text_pair")
        return {"text": self.column("text"), **({"text_pair": pair} if pair else {})}

    def predict_split(self, rows: list[dict[str, Any]], root: Path | None = None) -> dict[str, list[Any]]:
        split: dict[str, list[Any]] = {
            role: self._texts({col: [r.get(col) for r in rows]}, col, PREDICT, role.replace("_", " "))
            for role, col in self.input_columns().items()
        }
        split["label"] = [0] * len(rows)  # a placeholder: evaluate encodes one; score=False ignores it
        return split

    @staticmethod
    def _texts(ds: Dataset | dict[str, list[Any]], column: str, split: str, role: str) -> list[str]:
        texts = list(ds[column])
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise UserError(
                f"{role} column '{column}' in {split} holds empty or non-text values (e.g. {texts[bad]!r}); "
                "clean the data or pick another column"
            )
        return texts

    def _label_names(self, ds: Dataset) -> list[str]:
        col = self.column("label")
        feat = ds.features.get(col)
        if getattr(feat, "names", None):  # ClassLabel from a hub dataset
            return list(feat.names)
        values = {self._label_str(ds, v) for v in list(ds[col])}
        if any(v in ("None", "nan", "") for v in values):
            raise UserError(f"label column '{col}' has empty values; fill or drop those rows")
        return sorted(values, key=lambda v: (0, int(v)) if v.lstrip("-").isdigit() else (1, v))

    def _label_str(self, ds: Dataset, v: Any) -> str:
        feat = ds.features.get(self.column("label"))
        if getattr(feat, "names", None):
            return feat.names[v]
        if isinstance(v, float) and not math.isnan(v) and v.is_integer():
            v = int(v)
        return str(v)

    @property
    def train_size(self) -> int:
        return len(self.splits["train"]["label"])

    def load_model(self, spec: ModelSpec) -> tuple[nn.Module, Any]:
        tok, config = load_text_model_config(self, spec)
        self.tokenizer = tok
        self._encoded: dict[str, list[dict[str, Any]]] = {}
        if self.family == "seq2seq":
            return self._load_text_to_text(spec, tok, config), tok
        if self.family == "decoder" and self.lm_scoring:
            return self._load_label_scoring(spec, tok, config), tok
        self.max_length = fit_max_length(self.spec, spec.name, tok, config)
        n = len(self.labels)
        model, self.head_modules = models.load_with_new_modules(
            AutoModelForSequenceClassification, spec, num_labels=n, ignore_mismatched_sizes=True,  # new head
            id2label=dict(enumerate(self.labels)), label2id={l: i for i, l in enumerate(self.labels)}, **self.model_kwargs,
        )
        model.config.pad_token_id = tok.pad_token_id  # decoders find each row's last token by it
        self.peft_task_type = "SEQ_CLS"
        self._collate = DataCollatorWithPadding(tok, pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt")
        return model, tok

    def _load_text_to_text(self, spec: ModelSpec, tok: Any, config: Any) -> nn.Module:
        self.max_length = fit_max_length(self.spec, spec.name, tok, config)
        model = models.load_pretrained(AutoModelForSeq2SeqLM, spec, **self.model_kwargs)
        self.peft_task_type = "SEQ_2_SEQ_LM"
        self.head_modules = []
        # Naming the options lets an untuned instruction model (flan-T5) answer with one of them.
        template = self.spec.prompt or "{input}\nOptions: " + ", ".join(self.labels) + ".\nAnswer:"
        self.codec = PairCodec(tok, "seq2seq", template, self.max_length, self.spec.max_target_length)
        self._label_ids = [self.codec.target(name) for name in self.labels]
        self.context_window = position_limit(tok, config)
        return model

    def _load_label_scoring(self, spec: ModelSpec, tok: Any, config: Any) -> nn.Module:
        """A decoder without a head: each label name is scored by its mean token log-probability
        after the prompt (for in-context baselines, whose demonstrations a head cannot read)."""
        self._label_ids = [tok(" " + name, add_special_tokens=False)["input_ids"] for name in self.labels]
        longest = max(len(ids) for ids in self._label_ids)
        self.max_length = fit_max_length(self.spec, spec.name, tok, config, extra=longest)
        model = models.load_pretrained(AutoModelForCausalLM, spec, **self.model_kwargs)
        model.config.pad_token_id = tok.pad_token_id
        self.peft_task_type, self.head_modules = "CAUSAL_LM", []
        template = self.spec.prompt or "{input}\nOptions: " + ", ".join(self.labels) + ".\nAnswer:"
        self.codec = PairCodec(tok, "decoder", template, self.max_length, longest + 1)
        self.context_window = position_limit(tok, config)
        return model

    @property
    def _mode(self) -> str:
        """head (a classifier), text (seq2seq writes the label) or score (a decoder scores label names)."""
        return "text" if self.family == "seq2seq" else "score" if hasattr(self, "codec") else "head"

    def _score_labels(self, model: nn.Module, prompts: list[list[int]], flops: Any) -> torch.Tensor:
        """[examples, labels] mean log-probability of each label's tokens after its prompt."""
        rows = [{"input_ids": p + ids, "labels": [-100] * len(p) + ids} for p in prompts for ids in self._label_ids]
        batch = self.codec.collate(rows)
        labels = batch.pop("labels").to(next(model.parameters()).device)
        batch = {k: v.to(labels.device) for k, v in batch.items()}
        logits = (flops.forward(model, batch) if flops is not None else model(**batch)).logits
        sums, counts = choice_logprobs(logits, labels, shift=True)
        return (sums / counts).view(len(prompts), len(self._label_ids))

    def demonstrate(self, k: int, seed: int) -> dict[str, Any]:
        if self._mode == "head":  # a classification head reads no demonstrations
            return super().demonstrate(k, seed)
        picks = np.random.default_rng(seed).choice(self.train_size, size=min(k, self.train_size), replace=False)
        return self.codec_demonstrations(
            self.codec, [(self._source("train", i), self.labels[self.splits["train"]["label"][i]]) for i in picks])

    def _source(self, split: str, i: int) -> str:
        cols = self.splits[split]
        return cols["text"][i] if "text_pair" not in cols else f"{cols['text'][i]}\n{cols['text_pair'][i]}"

    def _encode(self, split: str) -> list[dict[str, Any]]:
        if split not in self._encoded:
            cols = self.splits[split]
            if self._mode == "text":
                self._encoded[split] = [
                    {"input_ids": self.codec.prompt(self._source(split, i)), "labels": self._label_ids[y]}
                    for i, y in enumerate(cols["label"])
                ]
            elif self._mode == "score":  # prompt + the gold label's tokens, the loss on those only
                prompts = [self.codec.prompt(self._source(split, i)) for i in range(len(cols["label"]))]
                self._encoded[split] = [
                    {"input_ids": p + self._label_ids[y], "labels": [-100] * len(p) + self._label_ids[y], "prompt": p, "gold": y}
                    for p, y in zip(prompts, cols["label"])
                ]
            else:
                enc = self.tokenizer(cols["text"], cols.get("text_pair"), truncation=True, max_length=self.max_length)
                keys = list(enc.keys())
                self._encoded[split] = [
                    {**{k: enc[k][i] for k in keys}, "labels": y} for i, y in enumerate(cols["label"])
                ]
        return self._encoded[split]

    def _batch(self, rows: list[dict[str, Any]]) -> Batch:
        if self._mode == "head":
            return self._collate(rows)
        return self.codec.collate([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        return endless_batches(self._encode("train"), batch_size, seed, self._batch)

    def match_label(self, text: str) -> int:
        """The label a generated text names (case and surrounding punctuation ignored), or -1."""
        norm = text.strip().strip(".!?,;:\"'").strip().lower()
        for i, name in enumerate(self.labels):
            if norm == name.lower():
                return i
        return -1

    @torch.inference_mode()
    def evaluate(
        self, model: nn.Module, split: str, batch_size: int, flops: Any = None,
        progress: Progress | None = None, limit: int | None = None, score: bool = True,
    ) -> EvalResult:
        rows = self._encode(split)[:limit]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        # Little padding; label scoring batches prompts, so they set the order (never the gold label).
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].get("prompt", rows[i]["input_ids"])))
        preds = [0] * len(rows)
        loss_sum = 0.0
        longest = max(len(ids) for ids in self._label_ids) if self.family == "seq2seq" else 0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            if score or self._mode == "head":  # text and score modes predict with other passes
                batch = {k: v.to(device) for k, v in self._batch([rows[j] for j in idx]).items()}
                out = flops.forward(model, batch) if flops is not None else model(**batch)
                loss_sum += float(out.loss) * len(idx)
            if self.family == "seq2seq":  # the label word is generated, then matched
                texts = self.codec.generate(model, [rows[j]["input_ids"] for j in idx], LABEL_DECODING, flops, longest)
                guesses = [self.match_label(t) for t in texts]
            elif self._mode == "score":
                guesses = self._score_labels(model, [rows[j]["prompt"] for j in idx], flops).argmax(-1).tolist()
            else:
                guesses = out.logits.argmax(-1).tolist()
            for j, p in zip(idx, guesses):
                preds[j] = p
            if progress:
                progress(i + len(idx), len(rows))
        model.train(was_training)
        refs = self.splits[split]["label"][: len(rows)]
        if not score:
            return EvalResult(metrics={}, predictions=preds, references=refs, examples=len(rows))
        # Text-to-text predicts -1 for a text naming no label: score it as wrong, not as a class.
        labels = list(range(len(self.labels))) if self.family == "seq2seq" else None
        metrics = classification_metrics(refs, preds, labels)
        metrics["loss"] = loss_sum / max(len(rows), 1)
        if self.family == "seq2seq":
            metrics["unmatched"] = sum(p < 0 for p in preds) / max(len(rows), 1)
        return EvalResult(metrics=metrics, predictions=preds, references=refs, examples=len(rows))

    def example(self, split: str, i: int) -> tuple[str, str]:
        return self._source(split, i), self.labels[self.splits[split]["label"][i]]

    def render(self, prediction: Any) -> str:
        return self.labels[prediction] if isinstance(prediction, int) and 0 <= prediction < len(self.labels) else "(no label)"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "labels": self.labels, "sizes": {s: len(c["label"]) for s, c in self.splits.items()},
                "max_length": getattr(self, "max_length", self.spec.max_length)}
