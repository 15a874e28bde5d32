"""Statistics for comparing methods: confidence intervals over seeds, paired bootstrap over test examples.

Seeds vary the whole run (initialisation, data order), so a method's spread over seeds is
its run-to-run noise: the mean gets a Student-t interval. Two methods scored on the same
test examples are compared with a paired bootstrap (Koehn 2004; Dror et al. 2018):
resample examples with replacement, recompute each corpus metric (macro-F1 and ROUGE do
not decompose per example), and read the interval and p-value off the differences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

Metric = Callable[[Sequence[Any], Sequence[Any]], float]  # (references, predictions) -> score


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float | None  # None for a single seed: no spread to estimate
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def __str__(self) -> str:
        return f"{self.mean:.4f}" if self.half_width is None else f"{self.mean:.4f} ± {self.half_width:.4f}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and the half-width of its Student-t confidence interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    if x.size == 1:
        return Interval(float(x[0]), None, 1)
    sem = float(x.std(ddof=1)) / math.sqrt(x.size)
    t = float(stats.t.ppf(0.5 + confidence / 2, df=x.size - 1))
    return Interval(float(x.mean()), t * sem, int(x.size))


@dataclass(frozen=True)
class PairedResult:
    delta: float  # metric(a) - metric(b) on the full test set
    low: float  # bootstrap percentile interval of the difference
    high: float
    p_value: float  # two-sided: how often a resample's difference falls on the other side of zero
    resamples: int

    @property
    def distinguishable(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(
    references: Sequence[Any], preds_a: Sequence[Any], preds_b: Sequence[Any], metric: Metric,
    resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> PairedResult:
    """Compare two methods' predictions on the same test examples."""
    n = len(references)
    if not (n == len(preds_a) == len(preds_b)) or n == 0:
        raise ValueError("references and both prediction lists must be non-empty and equally long")
    refs, a, b = np.asarray(references, dtype=object), np.asarray(preds_a, dtype=object), np.asarray(preds_b, dtype=object)
    delta = metric(list(refs), list(a)) - metric(list(refs), list(b))
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, n, n)
        r_refs = list(refs[idx])
        diffs[r] = metric(r_refs, list(a[idx])) - metric(r_refs, list(b[idx]))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    # Two-sided percentile p-value: the share of resampled differences at or past zero, doubled.
    tail = np.mean(diffs <= 0) if delta > 0 else np.mean(diffs >= 0) if delta < 0 else 1.0
    return PairedResult(float(delta), float(low), float(high), float(min(1.0, 2 * tail)), resamples)
