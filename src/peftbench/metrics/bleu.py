"""Corpus BLEU-1..4 (sacrebleu, cumulative n-gram orders, effective order), as fractions."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

from peftbench.metrics.base import SummableMetric
from peftbench.metrics.registry import register


def streams(references: Sequence[Sequence[str]]) -> list[list[str]]:
    """sacrebleu takes reference streams: short reference lists are padded with their own first
    reference (which changes no max)."""
    width = max((len(r) for r in references), default=1)
    return [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]


class BleuMetric(SummableMetric):
    """Corpus BLEU-n from summed sentence statistics [hyp_len, ref_len, correct_1..n, total_1..n]:
    exactly what sacrebleu's corpus_score sums and scores."""

    def __init__(self, order: int) -> None:
        super().__init__(f"bleu{order}", f"bleu{order}", True, ("distractors",), expensive=True)
        self.order = order

    @cached_property
    def bleu(self) -> Any:
        from sacrebleu.metrics import BLEU

        return BLEU(max_ngram_order=self.order, effective_order=True)

    def stats(self, references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
        rows = self.bleu._extract_corpus_statistics(list(predictions), streams(references))
        return np.asarray(rows, dtype=float).reshape(len(rows), 2 + 2 * self.order)

    def from_sums(self, sums: np.ndarray, n: int) -> np.ndarray:
        return np.asarray([self.bleu._compute_score_from_stats([int(v) for v in row]).score / 100 for row in sums])


BLEU_ORDERS = {n: register(BleuMetric(n)) for n in (1, 2, 3, 4)}


def bleu(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    return {m.name: m.score(references, predictions) for m in BLEU_ORDERS.values()}
