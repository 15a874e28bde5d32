"""Statistics for comparing methods: confidence intervals over seeds, paired bootstrap over test examples.

Seeds vary the whole run (initialisation, data order), so a method's spread over seeds is
its run-to-run noise: the mean gets a Student-t interval. Two methods scored on the same
test examples are compared with a paired bootstrap (Koehn 2004; Dror et al. 2018):
resample examples with replacement, recompute each corpus metric (macro-F1 and ROUGE do
not decompose per example), and read the interval and p-value off the differences.
"""

from __future__ import annotations

import hashlib
import json
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


# -- seed-aware paired bootstrap -------------------------------------------------------
#
# Every metric the tasks report is a function of sums of per-example statistics:
# accuracy and ROUGE F are means of per-example scores, macro-F1 a function of per-class
# true-positive / predicted / gold counts, corpus BLEU a function of summed n-gram counts.
# A resample is a vector of counts (how often each example was drawn), so its statistics
# are counts @ per-example statistics: one matrix product per seed for all resamples,
# instead of re-running the metric on every resample.


class SummableMetric:
    """A corpus metric computed from summed per-example statistics; callable as a Metric."""

    name: str = "metric"
    expensive: bool = False  # text metrics: remember statistics, a report scores the best method's often

    def stats(self, references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
        """Per-example statistics, shape (n examples, k)."""
        raise NotImplementedError

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

    def from_sums(self, sums: np.ndarray, n: int) -> np.ndarray:
        """Scores from statistics summed over a (re)sample: (R, k) -> (R,); n examples each."""
        raise NotImplementedError

    def __call__(self, references: Sequence[Any], predictions: Sequence[Any]) -> float:
        s = self.example_stats(references, predictions)
        return float(self.from_sums(s.sum(axis=0, keepdims=True), len(references))[0])

    def __repr__(self) -> str:
        return f"<metric {self.name}>"


class MeanMetric(SummableMetric):
    """The mean of a per-example score (accuracy, ROUGE F-measure)."""

    def __init__(self, name: str, per_example: Callable[[Sequence[Any], Sequence[Any]], np.ndarray],
                 expensive: bool = False) -> None:
        self.name, self.per_example, self.expensive = name, per_example, expensive

    def stats(self, references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
        return np.asarray(self.per_example(references, predictions), dtype=float).reshape(-1, 1)

    def from_sums(self, sums: np.ndarray, n: int) -> np.ndarray:
        return sums[:, 0] / n


class MacroMetric(SummableMetric):
    """Macro F1 / precision / recall as sklearn computes them with zero_division=0.

    labels=None mirrors sklearn's default: the classes present in references or
    predictions (of the whole list scored, then fixed for its resamples).
    """

    def __init__(self, name: str, which: str, labels: Sequence[int] | None = None) -> None:
        self.name, self.which, self.labels = name, which, None if labels is None else list(labels)

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


class BleuMetric(SummableMetric):
    """Corpus BLEU-n as tasks.metrics.bleu computes it (sacrebleu, effective order), as a fraction."""

    def __init__(self, order: int) -> None:
        from sacrebleu.metrics import BLEU

        self.name, self.order, self.expensive = f"bleu{order}", order, True
        self.bleu = BLEU(max_ngram_order=order, effective_order=True)

    def stats(self, references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
        width = max((len(r) for r in references), default=1)
        streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
        # sacrebleu's per-sentence statistics: [hyp_len, ref_len, correct_1..n, total_1..n]
        return np.asarray(self.bleu._extract_corpus_statistics(list(predictions), streams), dtype=float)

    def from_sums(self, sums: np.ndarray, n: int) -> np.ndarray:
        return np.asarray([self.bleu._compute_score_from_stats([int(v) for v in row]).score / 100 for row in sums])


def _rouge_per_example(key: str) -> Callable[[Sequence[Any], Sequence[Any]], np.ndarray]:
    def score(references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
        from rouge_score import rouge_scorer

        from peftbench.tasks.metrics import sentences_per_line

        scorer = rouge_scorer.RougeScorer([key], use_stemmer=True)  # as tasks.metrics.rouge, one key only
        return np.asarray([
            scorer.score_multi([sentences_per_line(r) for r in ([refs] if isinstance(refs, str) else refs)],
                               sentences_per_line(pred))[key].fmeasure
            for pred, refs in zip(predictions, references, strict=True)
        ])

    return score


def _accuracy(references: Sequence[Any], predictions: Sequence[Any]) -> np.ndarray:
    return np.asarray([r == p for r, p in zip(references, predictions, strict=True)], dtype=float)


_CLASSIFICATION = ("classification", "image_classification")
_ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def metric_for(task_kind: str, metric_name: str, labels: Sequence[int] | None = None) -> SummableMetric:
    """The test metric `metric_name` of a task kind, scored from stored predictions as the task does.

    labels: for classification, the classes macro scores average over (the task passes all
    label indices for text-to-text models, whose unmatched outputs are -1); None: sklearn's
    default. Raises ValueError for a metric that predictions alone cannot give (loss).
    """
    if metric_name == "accuracy" and task_kind in (*_CLASSIFICATION, "multiple_choice"):
        return MeanMetric("accuracy", _accuracy)
    if task_kind in _CLASSIFICATION and metric_name.startswith("macro_"):
        which = metric_name.removeprefix("macro_")
        if which in ("f1", "precision", "recall"):
            return MacroMetric(metric_name, which, labels)
    if task_kind in ("summarization", "table_to_text", "distractors") and metric_name in _ROUGE:
        if task_kind != "distractors" or metric_name == "rougeL":
            return MeanMetric(metric_name, _rouge_per_example(metric_name), expensive=True)
    if task_kind == "distractors" and metric_name in ("bleu1", "bleu2", "bleu3", "bleu4"):
        return BleuMetric(int(metric_name[-1]))
    raise ValueError(f"metric '{metric_name}' of task '{task_kind}' cannot be scored from stored predictions")


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-d object array (np.asarray would turn equal-length reference lists into a 2-d array)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _summarize(delta: float, diffs: np.ndarray, confidence: float) -> PairedResult:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    tail = np.mean(diffs <= 0) if delta > 0 else np.mean(diffs >= 0) if delta < 0 else 1.0
    return PairedResult(float(delta), float(low), float(high), float(min(1.0, 2 * tail)), len(diffs))


def paired_bootstrap_seeds(
    references: Sequence[Any], seeds_a: Sequence[Sequence[Any]], seeds_b: Sequence[Sequence[Any]], metric: Metric,
    resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> PairedResult:
    """Compare two methods that each have several seeds' predictions on the same test examples.

    Each resample draws example indices once and scores every seed's predictions on them;
    a method's score is the mean over its seeds, so the interval covers test-set sampling
    with seed noise averaged out. A SummableMetric is resampled from per-example statistics
    (fast); any other metric is recomputed on each resample.
    """
    n = len(references)
    if n == 0 or not seeds_a or not seeds_b:
        raise ValueError("need references and at least one seed's predictions per method")
    if any(len(p) != n for p in (*seeds_a, *seeds_b)):
        raise ValueError("every seed's predictions must be as long as the references")
    refs = list(references)
    delta = float(np.mean([metric(refs, list(p)) for p in seeds_a]) - np.mean([metric(refs, list(p)) for p in seeds_b]))
    rng = np.random.default_rng(seed)
    if isinstance(metric, SummableMetric):
        stats_a = [metric.example_stats(refs, list(p)) for p in seeds_a]
        stats_b = [metric.example_stats(refs, list(p)) for p in seeds_b]
        diffs = np.empty(resamples)
        chunk = max(1, min(resamples, 4_000_000 // n))  # bound the (chunk x n) count matrix
        for start in range(0, resamples, chunk):
            r = min(chunk, resamples - start)
            idx = rng.integers(0, n, (r, n))
            counts = np.bincount((idx + n * np.arange(r)[:, None]).ravel(), minlength=r * n).reshape(r, n).astype(float)
            score_a = np.mean([metric.from_sums(counts @ s, n) for s in stats_a], axis=0)
            score_b = np.mean([metric.from_sums(counts @ s, n) for s in stats_b], axis=0)
            diffs[start : start + r] = score_a - score_b
    else:
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
