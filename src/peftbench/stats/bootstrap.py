"""The paired bootstrap over test examples (Koehn 2004; Dror et al. 2018).

Two methods scored on the same test examples: resample examples with replacement,
recompute each corpus metric (macro-F1 and ROUGE do not decompose per example), and read
the interval and p-value off the differences.

A metric given as sufficient statistics (see peftbench.metrics) is resampled fast: a
resample is a vector of counts (how often each example was drawn), so its statistics are
counts @ per-example statistics, one matrix product per seed for all resamples, instead of
re-running the metric on every resample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

Metric = Callable[[Sequence[Any], Sequence[Any]], float]  # (references, predictions) -> score


@runtime_checkable
class Summable(Protocol):
    """A corpus metric from summed per-example statistics (peftbench.metrics.SummableMetric)."""

    def example_stats(self, references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray: ...

    def from_sums(self, sums: np.ndarray, n: int) -> np.ndarray: ...


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


def _summarize(delta: float, diffs: np.ndarray, confidence: float) -> PairedResult:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    # Two-sided percentile p-value: the share of resampled differences at or past zero, doubled.
    tail = np.mean(diffs <= 0) if delta > 0 else np.mean(diffs >= 0) if delta < 0 else 1.0
    return PairedResult(float(delta), float(low), float(high), float(min(1.0, 2 * tail)), len(diffs))


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
    return _summarize(delta, diffs, confidence)


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-d object array (np.asarray would turn equal-length reference lists into a 2-d array)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _summed_diffs(metric: Summable, refs: list[Any], seeds_a: Sequence[Sequence[Any]], seeds_b: Sequence[Sequence[Any]],
                  resamples: int, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """The full-set difference and every resample's, from per-example statistics."""
    n = len(refs)
    stats_a = [metric.example_stats(refs, list(p)) for p in seeds_a]
    stats_b = [metric.example_stats(refs, list(p)) for p in seeds_b]
    full = [[float(metric.from_sums(s.sum(axis=0, keepdims=True), n)[0]) for s in side] for side in (stats_a, stats_b)]
    delta = float(np.mean(full[0]) - np.mean(full[1]))
    diffs = np.empty(resamples)
    chunk = max(1, min(resamples, 4_000_000 // n))  # bound the (chunk x n) count matrix
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        idx = rng.integers(0, n, (r, n))
        counts = np.bincount((idx + n * np.arange(r)[:, None]).ravel(), minlength=r * n).reshape(r, n).astype(float)
        score_a = np.mean([metric.from_sums(counts @ s, n) for s in stats_a], axis=0)
        score_b = np.mean([metric.from_sums(counts @ s, n) for s in stats_b], axis=0)
        diffs[start : start + r] = score_a - score_b
    return delta, diffs


def paired_bootstrap_seeds(
    references: Sequence[Any], seeds_a: Sequence[Sequence[Any]], seeds_b: Sequence[Sequence[Any]], metric: Metric,
    resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> PairedResult:
    """Compare two methods that each have several seeds' predictions on the same test examples.

    Each resample draws example indices once and scores every seed's predictions on them;
    a method's score is the mean over its seeds, so the interval covers test-set sampling
    with seed noise averaged out. A Summable metric is resampled from per-example
    statistics (fast); any other metric is recomputed on each resample.
    """
    n = len(references)
    if n == 0 or not seeds_a or not seeds_b:
        raise ValueError("need references and at least one seed's predictions per method")
    if any(len(p) != n for p in (*seeds_a, *seeds_b)):
        raise ValueError("every seed's predictions must be as long as the references")
    refs = list(references)
    rng = np.random.default_rng(seed)
    if isinstance(metric, Summable):
        delta, diffs = _summed_diffs(metric, refs, seeds_a, seeds_b, resamples, rng)
    else:
        delta = float(np.mean([metric(refs, list(p)) for p in seeds_a]) - np.mean([metric(refs, list(p)) for p in seeds_b]))
        arr_a, arr_b, refs_arr = [_objects(p) for p in seeds_a], [_objects(p) for p in seeds_b], _objects(refs)
        diffs = np.empty(resamples)
        for r in range(resamples):
            idx = rng.integers(0, n, n)
            r_refs = list(refs_arr[idx])
            diffs[r] = (np.mean([metric(r_refs, list(p[idx])) for p in arr_a])
                        - np.mean([metric(r_refs, list(p[idx])) for p in arr_b]))
    if np.allclose(diffs, 0.0, atol=1e-12) and abs(delta) < 1e-12:  # identical: float noise is no evidence
        diffs, delta = np.zeros_like(diffs), 0.0
    return _summarize(delta, diffs, confidence)
