"""ROUGE F-measure (rouge-score, stemmed), the mean over examples; an example takes its best reference."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from peftbench.metrics.base import MeanMetric
from peftbench.metrics.registry import register

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences_per_line(text: str) -> str:
    """rougeLsum scores summary-level LCS over newline-separated sentences.

    A regex splitter stands in for nltk's punkt, whose model would need a download.
    """
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def fmeasures(predictions: Sequence[str], references: Sequence[Any], keys: Sequence[str] = ROUGE_KEYS) -> np.ndarray:
    """Per-example F-measures, shape (n, len(keys)); with several references the best one (rouge-score's score_multi).

    A reference may be one string or a list of them.
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    rows = []
    for pred, refs in zip(predictions, references, strict=True):
        refs = [refs] if isinstance(refs, str) else refs
        scores = scorer.score_multi([sentences_per_line(r) for r in refs], sentences_per_line(pred))
        rows.append([scores[k].fmeasure for k in keys])
    return np.asarray(rows, dtype=float).reshape(len(rows), len(keys))


def _per_example(key: str) -> Callable[[Sequence[Any], Sequence[Any]], np.ndarray]:
    def scores(references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
        return fmeasures(predictions, references, (key,))[:, 0]

    return scores


_TEXT_KINDS = ("summarization", "table_to_text")
ROUGE = {k: register(MeanMetric(k, _per_example(k), k, (*_TEXT_KINDS, "distractors") if k == "rougeL" else _TEXT_KINDS,
                                expensive=True))
         for k in ROUGE_KEYS}


def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Every ROUGE key's corpus score, from one scoring pass."""
    per_example = fmeasures(predictions, references)
    return {k: ROUGE[k].aggregate(per_example[:, [i]]) for i, k in enumerate(ROUGE_KEYS)}
