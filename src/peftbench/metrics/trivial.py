"""Trivial baselines that every classification and multiple-choice table shows: always the majority
training class, and uniform chance. A tuned method at or below them learned nothing usable, which a
ranking among the methods alone cannot show (a head that predicts one class for everything)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from peftbench.metrics.classification import classification_metrics


def majority(train: Sequence[int]) -> int:
    """The most frequent training label; the smallest on ties, so it is reproducible."""
    counts = Counter(train)
    return min(counts, key=lambda c: (-counts[c], c))


def label_baselines(train: Sequence[int], test: Sequence[int], classes: int) -> dict[str, dict[str, float]]:
    """Test scores of predicting the majority training class for everything, and the expected scores of
    guessing one of `classes` uniformly at random (accuracy 1/K; class c's F1 2·p·q/(p+q) with p its test
    share and q = 1/K, precision's and recall's expectations)."""
    m = majority(train)
    out = {"majority": classification_metrics(list(test), [m] * len(test))}
    q, n = 1.0 / classes, max(len(test), 1)
    shares = [sum(t == c for t in test) / n for c in range(classes)]
    f1 = [2 * p * q / (p + q) if p else 0.0 for p in shares]
    out["chance"] = {"accuracy": q, "macro_f1": sum(f1) / classes, "macro_precision": sum(shares) / classes,
                     "macro_recall": q}
    return out


def choice_baselines(train: Sequence[int], test: Sequence[int], choices: Sequence[int]) -> dict[str, dict[str, float]]:
    """Multiple choice: always the answer position most frequent in training, and uniform chance
    (the mean of 1 / choices over the test questions)."""
    m, n = majority(train), max(len(test), 1)
    return {"majority": {"accuracy": sum(t == m for t in test) / n},
            "chance": {"accuracy": sum(1.0 / c for c in choices) / n}}
