"""Accuracy and macro scores over class indices; the macro scores equal sklearn's to the last bit
(tests/test_metrics_registry.py), from the same per-class counts, so a run never imports sklearn (~1.4 s).

A prediction outside the classes averaged over (-1: a generated text naming no label)
counts as wrong, not as a class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from peftbench.metrics.base import MeanMetric, SummableMetric
from peftbench.metrics.registry import register

LABEL_KINDS = ("classification", "image_classification")  # task kinds whose predictions are class indices


def _correct(references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
    return np.asarray([r == p for r, p in zip(references, predictions, strict=True)], dtype=float)


class MacroMetric(SummableMetric):
    """Macro F1 / precision / recall with zero_division=0, from per-class tp / predicted / gold counts.

    labels=None mirrors sklearn's default: the classes present in references or
    predictions (of the whole list scored, then fixed for its resamples).
    """

    def __init__(self, name: str, which: str, label: str, labels: Sequence[int] | None = None) -> None:
        super().__init__(name, label, True, LABEL_KINDS)
        self.which, self.labels = which, None if labels is None else list(labels)

    def bind(self, labels: Sequence[int] | None = None) -> Self:
        out = super().bind(labels)
        out.labels = None if labels is None else list(labels)
        return out

    def stats(self, references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
        r, p = np.asarray(references), np.asarray(predictions)
        labels = self.labels if self.labels is not None else sorted(set(r.tolist()) | set(p.tolist()))
        cols = [(r == c) & (p == c) for c in labels] + [p == c for c in labels] + [r == c for c in labels]
        return np.stack(cols, axis=1).astype(float) if cols else np.zeros((len(r), 0))

    def from_sums(self, sums: np.ndarray, n: int) -> np.ndarray:
        k = sums.shape[1] // 3
        if k == 0:
            return np.zeros(sums.shape[0])
        tp, pred, gold = sums[:, :k], sums[:, k : 2 * k], sums[:, 2 * k :]
        den = {"f1": pred + gold, "precision": pred, "recall": gold}[self.which]
        num = 2 * tp if self.which == "f1" else tp
        per_class = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        return per_class.mean(axis=1)



ACCURACY = register(MeanMetric("accuracy", _correct, "accuracy", (*LABEL_KINDS, "multiple_choice")))
MACRO = (
    register(MacroMetric("macro_f1", "f1", "macro-F1")),
    register(MacroMetric("macro_precision", "precision", "macro-P")),
    register(MacroMetric("macro_recall", "recall", "macro-R")),
)


def classification_metrics(refs: list[int], preds: list[int], labels: list[int] | None = None) -> dict[str, float]:
    """Accuracy and macro scores. `labels`: the classes macro scores average over (accuracy counts every example)."""
    return {m.name: m.bind(labels).score(refs, preds) for m in (ACCURACY, *MACRO)}
