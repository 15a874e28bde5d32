"""The metric registry: one MetricSpec per metric, found by name.

Tasks score with it, checkpoint selection and rankings read its direction, the paired
bootstrap resamples its statistics, and tables and plots print its label. A metric is
added by registering its spec in one family module (classification, rouge, bleu, loss).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

from peftbench.metrics.base import MetricSpec, SummableMetric

T = TypeVar("T")
S = TypeVar("S", bound=MetricSpec)


class Registry(Generic[T]):
    """Items registered once by name; registering a name twice is a programming error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


METRICS: Registry[MetricSpec] = Registry("metric")


def register(spec: S) -> S:
    return METRICS.register(spec.name, spec)


def metric_label(name: str) -> str:
    """How tables and plots name a metric (its own name when unregistered: older stored runs)."""
    spec = METRICS.get(name)
    return spec.label if spec is not None else name


def lower_is_better(name: str) -> bool:
    spec = METRICS.get(name)
    return spec is not None and not spec.higher_is_better


def score_metric(name: str, references: Sequence[Any], predictions: Sequence[Any],
                 labels: Sequence[int] | None = None) -> float:
    """The corpus score of a registered metric that predictions give, as tasks report it."""
    spec = METRICS.get(name)
    if not isinstance(spec, SummableMetric):
        raise ValueError(f"metric '{name}' is not scored from predictions")
    return spec.bind(labels).score(references, predictions)


def metric_for(task_kind: str, metric_name: str, labels: Sequence[int] | None = None) -> SummableMetric:
    """The test metric `metric_name` of a task kind, scored from stored predictions as the task does.

    labels: for macro scores, the classes to average over (the task passes all label
    indices for text-to-text models, whose unmatched outputs are -1); None: sklearn's
    default. Raises ValueError for a metric that predictions alone cannot give (loss).
    """
    spec = METRICS.get(metric_name)
    if not isinstance(spec, SummableMetric) or task_kind not in spec.task_kinds:
        raise ValueError(f"metric '{metric_name}' of task '{task_kind}' cannot be scored from stored predictions")
    return spec.bind(labels)
