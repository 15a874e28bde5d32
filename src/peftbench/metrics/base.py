"""What a metric is: a name, a label, a direction and, when stored predictions give it, sufficient statistics.

Every metric scored from predictions is a function of sums of per-example statistics:
accuracy and ROUGE F are means of per-example scores, macro-F1 a function of per-class
true-positive / predicted / gold counts, corpus BLEU a function of summed n-gram counts.
So one definition serves the task (statistics summed over the split) and the paired
bootstrap (statistics summed over each resample).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, Self

import numpy as np


class MetricSpec:
    """A metric as tables, rankings and checkpoint selection read it.

    Scores that predictions alone do not give (the loss) are plain MetricSpecs.
    """

    def __init__(self, name: str, label: str | None = None, higher_is_better: bool = True) -> None:
        self.name, self.label, self.higher_is_better = name, label or name, higher_is_better

    def __repr__(self) -> str:
        return f"<metric {self.name}>"


class SummableMetric(MetricSpec):
    """A corpus metric computed from summed per-example statistics; callable as (references, predictions) -> score."""

    def __init__(self, name: str, label: str | None = None, higher_is_better: bool = True,
                 task_kinds: Sequence[str] = (), expensive: bool = False) -> None:
        super().__init__(name, label, higher_is_better)
        self.task_kinds = tuple(task_kinds)  # the task kinds whose stored predictions it scores
        self.expensive = expensive  # text metrics: remember statistics, a report scores the best method's often

    def stats(self, references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
        """Per-example statistics, shape (n examples, k)."""
        raise NotImplementedError

    def from_sums(self, sums: np.ndarray, n: int) -> np.ndarray:
        """Scores from statistics summed over a (re)sample: (R, k) -> (R,); n examples each."""
        raise NotImplementedError

    def score(self, references: Sequence[Any], predictions: Sequence[Any]) -> float:
        """The corpus score a task reports: statistics summed in example order (the order tasks always summed in)."""
        return self.aggregate(self.stats(references, predictions))

    def aggregate(self, stats: np.ndarray) -> float:
        """The score of the examples whose statistics are the rows of `stats`."""
        total = np.add.accumulate(stats, axis=0)[-1:] if len(stats) else np.zeros((1, stats.shape[1]))
        return float(self.from_sums(total, max(len(stats), 1))[0])

    def __call__(self, references: Sequence[Any], predictions: Sequence[Any]) -> float:
        """The score from the statistics the bootstrap resamples (equal to score(); tests hold them so)."""
        return self.aggregate(self.example_stats(references, predictions))

    def example_stats(self, references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
        """stats(), remembered by content for expensive metrics."""
        if not self.expensive:
            return self.stats(references, predictions)
        cache: dict[str, np.ndarray] = self.__dict__.setdefault("_cache", {})
        key = hashlib.sha256(json.dumps([list(references), list(predictions)], default=str).encode()).hexdigest()
        if key not in cache:
            if len(cache) >= 256:
                cache.clear()
            cache[key] = self.stats(references, predictions)
        return cache[key]

    def bind(self, labels: Sequence[int] | None = None) -> Self:
        """A scorer of its own (its own statistics cache); `labels` matter only to metrics averaged over classes."""
        out = copy.copy(self)
        out.__dict__.pop("_cache", None)
        return out


class MeanMetric(SummableMetric):
    """The mean of a per-example score (accuracy, ROUGE F-measure)."""

    def __init__(self, name: str, per_example: Callable[[Sequence[Any], Sequence[Any]], np.ndarray],
                 label: str | None = None, task_kinds: Sequence[str] = (), expensive: bool = False) -> None:
        super().__init__(name, label, True, task_kinds, expensive)
        self.per_example = per_example

    def stats(self, references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
        return np.asarray(self.per_example(references, predictions), dtype=float).reshape(-1, 1)

    def from_sums(self, sums: np.ndarray, n: int) -> np.ndarray:
        return sums[:, 0] / n
