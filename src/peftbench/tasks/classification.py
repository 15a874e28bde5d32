"""Text classification: encoder models with a sequence-classification head."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from peftbench.config import ModelSpec
from peftbench.errors import UserError
from peftbench.models import load_pretrained
from peftbench.tasks import register
from peftbench.tasks.base import Batch, EvalResult, Task
from peftbench.tasks.sources import SPLITS, load_splits

PAD_MULTIPLE = 8  # few distinct padded shapes, so FLOPs are counted a few times only


def classification_metrics(refs: list[int], preds: list[int]) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(refs, preds)),
        "macro_f1": float(f1_score(refs, preds, average="macro", zero_division=0)),
        "macro_precision": float(precision_score(refs, preds, average="macro", zero_division=0)),
        "macro_recall": float(recall_score(refs, preds, average="macro", zero_division=0)),
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


# Families whose position ids start after the padding index (RoBERTa's scheme): they take
# max_position_embeddings - (pad_token_id + 1) tokens.
PADDING_OFFSET_POSITIONS = {
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "mpnet", "ibert", "data2vec-text",
    "xmod", "roberta-prelayernorm",
}


def position_limit(tok: Any, config: Any) -> int | None:
    """How many tokens the model takes, or None when it does not say (relative positions)."""
    limits = []
    n = getattr(tok, "model_max_length", None)
    if isinstance(n, int) and 0 < n < 1_000_000:  # unset tokenizers report a huge number
        limits.append(n)
    pos = getattr(config, "max_position_embeddings", None)
    if isinstance(pos, int) and pos > 0 and getattr(config, "position_biased_input", True):
        if getattr(config, "model_type", "") in PADDING_OFFSET_POSITIONS:
            pos -= (getattr(config, "pad_token_id", None) or 0) + 1
        limits.append(pos)
    return min(limits) if limits else None


@register
class Classification(Task):
    kind = "classification"
    peft_task_type = "SEQ_CLS"

    labels: list[str]
    splits: dict[str, dict[str, list[Any]]]  # split -> column -> values

    def load_data(self) -> None:
        d = self.spec.data
        dd = load_splits(d)
        for split in SPLITS:
            cols = dd[split].column_names
            for role, col in (("text", d.text_column), ("label", d.label_column), ("text pair", d.text_pair_column)):
                if col is not None and col not in cols:
                    flag = "--" + role.replace(" ", "-") + "-column"
                    raise UserError(
                        f"{role} column '{col}' is missing from the {split} split (columns: {', '.join(cols)}); "
                        f"pass {flag} NAME"
                    )
        for split in SPLITS:
            odd = next((v for v in dd[split][d.label_column] if isinstance(v, (list, dict))), None)
            if odd is not None:
                raise UserError(
                    f"label column '{d.label_column}' in {split} holds lists or objects (e.g. {odd!r}); "
                    "each label must be one string or number"
                )
        self.labels = self._label_names(dd["train"])
        if len(self.labels) < 2:
            raise UserError(
                f"label column '{d.label_column}' has a single class ({self.labels[0]!r}) in train; "
                "classification needs at least two"
            )
        index = {name: i for i, name in enumerate(self.labels)}
        self.splits = {}
        for split in SPLITS:
            raw = [self._label_str(dd[split], v) for v in list(dd[split][d.label_column])]
            unknown = sorted({v for v in raw if v not in index})
            if unknown:
                raise UserError(
                    f"{split} split has labels not seen in train: {', '.join(unknown[:5])}; fix the labels or the split"
                )
            cols = {"text": self._texts(dd[split], d.text_column, split, "text"), "label": [index[v] for v in raw]}
            if d.text_pair_column:
                cols["text_pair"] = self._texts(dd[split], d.text_pair_column, split, "text pair")
            self.splits[split] = cols

    @staticmethod
    def _texts(ds: Dataset, column: str, split: str, role: str) -> list[str]:
        texts = list(ds[column])
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise UserError(
                f"{role} column '{column}' in {split} holds empty or non-text values (e.g. {texts[bad]!r}); "
                "clean the data or pick another column"
            )
        return texts

    def _label_names(self, ds: Dataset) -> list[str]:
        feat = ds.features.get(self.spec.data.label_column)
        if getattr(feat, "names", None):  # ClassLabel from a hub dataset
            return list(feat.names)
        values = {self._label_str(ds, v) for v in list(ds[self.spec.data.label_column])}
        if any(v in ("None", "nan", "") for v in values):
            raise UserError(f"label column '{self.spec.data.label_column}' has empty values; fill or drop those rows")
        return sorted(values, key=lambda v: (0, int(v)) if v.lstrip("-").isdigit() else (1, v))

    def _label_str(self, ds: Dataset, v: Any) -> str:
        feat = ds.features.get(self.spec.data.label_column)
        if getattr(feat, "names", None):
            return feat.names[v]
        if isinstance(v, float) and not math.isnan(v) and v.is_integer():
            v = int(v)
        return str(v)

    @property
    def train_size(self) -> int:
        return len(self.splits["train"]["label"])

    def load_model(self, spec: ModelSpec) -> tuple[nn.Module, Any]:
        tok = load_pretrained(AutoTokenizer, spec)
        config = load_pretrained(AutoConfig, spec)
        if config.is_encoder_decoder or getattr(config, "model_type", "") in ("vit", "clip_vision_model"):
            raise UserError(
                f"model '{spec.name}' ({config.model_type}) is not an encoder text model; "
                "classification here takes BERT-like encoders (other families arrive with their task support)"
            )
        self.max_length = self._max_length(spec, tok, config)
        n = len(self.labels)
        model = load_pretrained(
            AutoModelForSequenceClassification, spec, num_labels=n, ignore_mismatched_sizes=True,  # new head
            id2label=dict(enumerate(self.labels)), label2id={l: i for i, l in enumerate(self.labels)},
        )
        if tok.pad_token is None:  # GPT-2-like tokenizers have none
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        self.tokenizer = tok
        self._encoded: dict[str, list[dict[str, Any]]] = {}
        self._collate = DataCollatorWithPadding(tok, pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt")
        return model, tok

    def _max_length(self, spec: ModelSpec, tok: Any, config: Any) -> int:
        """The truncation length: the configured one, which the model must be able to take.

        An explicit max_length beyond the model's positions is refused (it would fail mid-run
        on the first long text); the default is lowered to the model's limit instead.
        """
        limit = position_limit(tok, config)
        want = self.spec.max_length
        if limit is None or want <= limit:
            return want
        if "max_length" in self.spec.model_fields_set:
            raise UserError(
                f"max length {want} is more than model '{spec.name}' takes ({limit} tokens); "
                f"pass --max-length {limit} or less"
            )
        return limit

    def _encode(self, split: str) -> list[dict[str, Any]]:
        if split not in self._encoded:
            cols = self.splits[split]
            enc = self.tokenizer(cols["text"], cols.get("text_pair"), truncation=True, max_length=self.max_length)
            keys = list(enc.keys())
            self._encoded[split] = [
                {**{k: enc[k][i] for k in keys}, "labels": y} for i, y in enumerate(cols["label"])
            ]
        return self._encoded[split]

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        rows = self._encode("train")
        lengths = [len(r["input_ids"]) for r in rows]
        rng = np.random.default_rng(seed)
        while True:
            for idx in length_grouped_batches(lengths, batch_size, rng):
                yield self._collate([rows[j] for j in idx])

    @torch.inference_mode()
    def evaluate(
        self, model: nn.Module, split: str, batch_size: int, flops: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> EvalResult:
        rows = self._encode(split)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # little padding
        preds = [0] * len(rows)
        loss_sum = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            batch = {k: v.to(device) for k, v in self._collate([rows[j] for j in idx]).items()}
            out = flops.forward(model, batch) if flops is not None else model(**batch)
            loss_sum += float(out.loss) * len(idx)
            for j, p in zip(idx, out.logits.argmax(-1).tolist()):
                preds[j] = p
            if progress:
                progress(i + len(idx), len(rows))
        model.train(was_training)
        refs = [r["labels"] for r in rows]
        metrics = classification_metrics(refs, preds)
        metrics["loss"] = loss_sum / len(rows)
        return EvalResult(metrics=metrics, predictions=preds, references=refs, examples=len(rows))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": self.labels, "sizes": {s: len(c["label"]) for s, c in self.splits.items()},
                "max_length": getattr(self, "max_length", self.spec.max_length)}
