"""Pure statistics: t intervals over seeds, the paired bootstrap over test examples, learning-curve measures."""

from __future__ import annotations

from peftbench.stats.bootstrap import Metric, PairedResult, Summable, paired_bootstrap, paired_bootstrap_seeds
from peftbench.stats.intervals import Interval, mean_ci

__all__ = ["Interval", "Metric", "PairedResult", "Summable", "mean_ci", "paired_bootstrap", "paired_bootstrap_seeds"]
