"""Confidence intervals over seeds.

Seeds vary the whole run (initialisation, data order), so a method's spread over seeds is
its run-to-run noise: the mean gets a Student-t interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


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


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the median: order statistics [x_(k), x_(n+1-k)], with k
    the largest such that P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. None while n is too small
    (n < 6 at 95%: even [min, max] covers less)."""
    xs = sorted(values)
    n, tail = len(xs), (1 - confidence) / 2
    k, below = 0, 0.0
    while k < n and (below := below + math.comb(n, k) / 2**n) <= tail:
        k += 1
    return (xs[k - 1], xs[n - k]) if k else None
