"""Metrics: one MetricSpec per metric in one registry (see registry.py); a module per family."""

from __future__ import annotations

from peftbench.metrics.base import MeanMetric, MetricSpec, SummableMetric
from peftbench.metrics.registry import (
    METRICS, Registry, lower_is_better, metric_for, metric_label, register, score_metric,
)

from peftbench.metrics import loss  # noqa: E402,F401,I001  (families register themselves)
from peftbench.metrics.bleu import bleu  # noqa: E402
from peftbench.metrics.classification import classification_metrics  # noqa: E402
from peftbench.metrics.rouge import ROUGE_KEYS, rouge, sentences_per_line  # noqa: E402

__all__ = [
    "METRICS", "ROUGE_KEYS", "MeanMetric", "MetricSpec", "Registry", "SummableMetric", "bleu",
    "classification_metrics", "lower_is_better", "metric_for", "metric_label", "register", "rouge",
    "score_metric", "sentences_per_line",
]
