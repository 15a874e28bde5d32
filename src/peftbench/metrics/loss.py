"""Scores a task reports that its stored predictions do not give: neither has statistics to resample."""

from __future__ import annotations

from peftbench.metrics.base import MetricSpec
from peftbench.metrics.registry import register

LOSS = register(MetricSpec("loss", "loss", higher_is_better=False))  # mean loss on the split
# Share of generated outputs that name no label (text-to-text classification).
UNMATCHED = register(MetricSpec("unmatched", "unmatched", higher_is_better=False))
