"""Text classification on every text family: reading and checking the labelled rows, then
batching and scoring them through the family's strategy (label_strategies)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from peftbench.config import ModelSpec
from peftbench.errors import UserError
from peftbench.tasks import register
from peftbench.tasks.base import PREDICT, Batch, ColumnRole, EvalResult, Progress, Task, metered
from peftbench.tasks.label_strategies import LABEL_STRATEGIES, LabelStrategy
from peftbench.metrics import classification_metrics
from peftbench.tasks.sources import SPLITS, load_splits
from peftbench.tasks.text import endless_batches, length_grouped_batches, load_text_model_config, position_limit
from peftbench.train import lm_loss

__all__ = ["Classification", "classification_metrics", "length_grouped_batches", "position_limit"]


@register
class Classification(Task):
    kind = "classification"
    summary = "Label a text (or a text pair); accuracy and macro-F1"
    families = tuple(LABEL_STRATEGIES.by_family)
    metrics = ("accuracy", "macro_f1")
    select_metric = "macro_f1"
    column_roles = (ColumnRole("text", "text"), ColumnRole("label", "label", input=False), ColumnRole("text_pair"))

    labels: list[str]
    strategy: LabelStrategy  # per family, chosen when the model loads
    splits: dict[str, dict[str, list[Any]]]  # split -> column -> values

    def load_data(self) -> None:
        dd = load_splits(self.spec.data)
        self.require_columns({s: dd[s].column_names for s in SPLITS}, self.checked_roles())
        text_col, label_col, pair_col = self.column("text"), self.column("label"), self.column("text_pair")
        for split in SPLITS:
            odd = next((v for v in dd[split][label_col][:] if isinstance(v, (list, dict))), None)
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
            raw = self._label_strs(dd[split])
            unknown = sorted({v for v in raw if v not in index})
            if unknown:
                raise UserError(
                    f"{split} split has labels not seen in train: {', '.join(unknown[:5])}; fix the labels or the split"
                )
            cols = {"text": self._texts(dd[split], text_col, split, "text"), "label": [index[v] for v in raw]}
            if pair_col:
                cols["text_pair"] = self._texts(dd[split], pair_col, split, "text pair")
            self.splits[split] = cols

    def predict_split(self, rows: list[dict[str, Any]], root: Path | None = None) -> dict[str, list[Any]]:
        split: dict[str, list[Any]] = {
            role: self._texts({col: [r.get(col) for r in rows]}, col, PREDICT, role.replace("_", " "))
            for role, col in self.input_columns().items()
        }
        split["label"] = [0] * len(rows)  # a placeholder: evaluate encodes one; score=False ignores it
        return split

    @staticmethod
    def _texts(ds: Dataset | dict[str, list[Any]], column: str, split: str, role: str) -> list[str]:
        texts = list(ds[column][:])  # [:]: one Arrow read; iterating a datasets Column formats row by row
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
        values = set(self._label_strs(ds))
        if any(v in ("None", "nan", "") for v in values):
            raise UserError(f"label column '{col}' has empty values; fill or drop those rows")
        return sorted(values, key=lambda v: (0, int(v)) if v.lstrip("-").isdigit() else (1, v))

    def _label_strs(self, ds: Dataset) -> list[str]:
        """The label column as strings. Column and features are looked up once: `Dataset.features`
        deep-copies on every access, and that per row was most of load_data's time."""
        col = self.column("label")
        names = getattr(ds.features.get(col), "names", None)
        if names:
            return [names[v] for v in ds[col][:]]
        return [str(int(v) if isinstance(v, float) and not math.isnan(v) and v.is_integer() else v) for v in ds[col][:]]

    @property
    def train_size(self) -> int:
        return len(self.splits["train"]["label"])

    def load_model(self, spec: ModelSpec) -> tuple[nn.Module, Any]:
        tok, config = load_text_model_config(self, spec)
        self.tokenizer = tok
        self.model_limit = position_limit(tok, config)  # what a longer max_length may reach (truncation.py)
        self._encoded: dict[str, list[dict[str, Any]]] = self.shared_encodings(spec)
        self.strategy = LABEL_STRATEGIES.pick(self.family, self.lm_scoring)(self)
        return self.strategy.load(spec, tok, config), tok

    def demonstrate(self, k: int, seed: int) -> dict[str, Any]:
        if self.strategy.codec is None:  # a classification head reads no demonstrations
            return super().demonstrate(k, seed)
        picks = np.random.default_rng(seed).choice(self.train_size, size=min(k, self.train_size), replace=False)
        return self.codec_demonstrations(
            self.strategy.codec, [(self.source("train", i), self.labels[self.splits["train"]["label"][i]]) for i in picks])

    def cut_lengths(self) -> tuple[dict[str, list[int]], int, int] | None:
        codec, splits = self.strategy.codec, {s: c for s, c in self.splits.items() if s != PREDICT}
        if codec is None:  # a head reads text (and pair) with special tokens, cut at max_length
            return ({s: [len(x) for x in self.tokenizer(c["text"], c.get("text_pair"))["input_ids"]] for s, c in splits.items()},
                    self.max_length, 0)
        budget = codec.source_budget()
        return ({s: codec.source_lengths([self.source(s, i) for i in range(len(c["label"]))]) for s, c in splits.items()},
                budget, codec.max_length - budget)

    def source(self, split: str, i: int) -> str:
        """Example i's input text (a pair on two lines), as a prompt shows it."""
        cols = self.splits[split]
        return cols["text"][i] if "text_pair" not in cols else f"{cols['text'][i]}\n{cols['text_pair'][i]}"

    def _encode(self, split: str) -> list[dict[str, Any]]:
        if split not in self._encoded:
            self._encoded[split] = self.strategy.encode(split)
        return self._encoded[split]

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        return endless_batches(self._encode("train"), batch_size, seed, self.strategy.collate)

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
        strategy, meter = self.strategy, metered(flops)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        # Little padding; label scoring batches prompts, so they set the order (never the gold label).
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].get("prompt", rows[i]["input_ids"])))
        preds = [0] * len(rows)
        loss_sum = 0.0
        for i in range(0, len(order), batch_size):
            picked = [rows[j] for j in order[i : i + batch_size]]
            out = None
            if score or strategy.forward_predicts:  # other strategies predict with passes of their own
                batch = {k: v.to(device) for k, v in strategy.collate(picked).items()}
                with meter.count(batch):
                    loss, out = lm_loss.loss_and_output(model, batch)  # out: None where an LM's loss was chunked
                loss_sum += float(loss) * len(picked)
            for j, p in zip(order[i : i + batch_size], strategy.predict(model, picked, out, meter)):
                preds[j] = p
            if progress:
                progress(i + len(picked), len(rows))
        model.train(was_training)
        refs = self.splits[split]["label"][: len(rows)]
        if not score:
            return EvalResult(metrics={}, predictions=preds, references=refs, examples=len(rows))
        # Text-to-text predicts -1 for a text naming no label: score it as wrong, not as a class.
        labels = list(range(len(self.labels))) if strategy.may_miss else None
        metrics = classification_metrics(refs, preds, labels)
        metrics["loss"] = loss_sum / max(len(rows), 1)
        if strategy.may_miss:
            metrics["unmatched"] = sum(p < 0 for p in preds) / max(len(rows), 1)
        return EvalResult(metrics=metrics, predictions=preds, references=refs, examples=len(rows))

    def example(self, split: str, i: int) -> tuple[str, str]:
        return self.source(split, i), self.labels[self.splits[split]["label"][i]]

    def render(self, prediction: Any) -> str:
        return self.labels[prediction] if isinstance(prediction, int) and 0 <= prediction < len(self.labels) else "(no label)"

    def describe(self) -> dict[str, Any]:
        from peftbench.metrics.trivial import label_baselines

        if "baselines" not in self.__dict__:  # what always-the-majority and uniform guessing score on test
            self.baselines = label_baselines(self.splits["train"]["label"], self.splits["test"]["label"], len(self.labels))
        return {**super().describe(), "labels": self.labels, "sizes": {s: len(c["label"]) for s, c in self.splits.items()},
                "max_length": getattr(self, "max_length", self.spec.max_length), "baselines": self.baselines,
                **({"pooling": self.pooling} if getattr(self, "pooling", None) else {})}
