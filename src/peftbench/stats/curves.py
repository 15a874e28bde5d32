"""Learning-curve summaries: area under the curve, compute needed to reach a score, seed bands.

A stored curve is a list of validation points {step, tokens, train_flops, seconds,
train_loss, metrics{...}} taken during training; there is no point at step 0 (except for
methods that do not train, whose only point is at 0 FLOPs).

AULC choice: x is training progress p = x / x_final in [0, 1] (x: training FLOPs by
default), the curve is linear between points, and on [0, p_first] the score is held at the
first point's value (nothing was measured before it; every run of one budget is treated
alike). Dividing by the unit range makes AULC the mean validation score over training, on
the metric's own scale: a method that learns early scores closer to its final value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftbench.stats.intervals import mean_ci

Curve = list[dict[str, Any]]


def curve_xy(curve: Curve, metric: str, x: str = "train_flops") -> tuple[np.ndarray, np.ndarray]:
    """x values and scores of the points that have the metric (train_loss is a top-level key)."""
    xs, ys = [], []
    for p in curve:
        y = p.get(metric) if metric == "train_loss" else (p.get("metrics") or {}).get(metric)
        if y is not None and p.get(x) is not None:
            xs.append(float(p[x]))
            ys.append(float(y))
    order = np.argsort(xs, kind="stable")
    return np.asarray(xs)[order], np.asarray(ys)[order]


def aulc(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Mean score over training progress 0..1 (see the module note for the choice at x=0)."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if x.size == 0:
        raise ValueError("an empty curve has no area")
    if x[-1] <= 0:  # nothing trained: the curve is one score
        return float(y[-1])
    p = np.concatenate([[0.0], x / x[-1]])
    s = np.concatenate([[y[0]], y])
    return float(np.sum((p[1:] - p[:-1]) * (s[1:] + s[:-1]) / 2))


def flops_to_reach(xs: Sequence[float], ys: Sequence[float], target: float, lower_is_better: bool = False) -> float | None:
    """The x at which the curve first reaches target, interpolating linearly between points.

    None if it never does. A first point already at target gives that point's x: what came
    before it was not measured, so no earlier x is claimed.
    """
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    hit = (y <= target) if lower_is_better else (y >= target)
    if not hit.any():
        return None
    i = int(np.argmax(hit))
    if i == 0 or y[i] == y[i - 1]:
        return float(x[i])
    frac = (target - y[i - 1]) / (y[i] - y[i - 1])
    return float(x[i - 1] + frac * (x[i] - x[i - 1]))


def flops_to_fraction(curve: Curve, target: float, metric: str, lower_is_better: bool = False) -> float | None:
    """Training FLOPs at which a stored curve's validation `metric` first reaches `target`."""
    xs, ys = curve_xy(curve, metric)
    return flops_to_reach(xs, ys, target, lower_is_better) if xs.size else None


def target_score(best: float, fraction: float = 0.9, lower_is_better: bool = False) -> float:
    """`fraction` of the best score; for a loss, within 1/fraction of the best (lowest) loss."""
    return best / fraction if lower_is_better else best * fraction


@dataclass(frozen=True)
class Band:
    """Seeds' curves on one grid: mean and 95% t-interval per grid point (None bands for one seed)."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray | None
    high: np.ndarray | None
    n: int


def band(curves: Sequence[tuple[Sequence[float], Sequence[float]]], points: int = 40, log: bool = True) -> Band | None:
    """Interpolate several seeds' curves onto a common grid over the x range they all cover.

    No extrapolation: the grid spans from the latest first point to the earliest last
    point. Log spacing suits FLOPs, which plots use on a log axis. None when the curves
    share no range (or there are none).
    """
    xy = [(np.asarray(x, dtype=float), np.asarray(y, dtype=float)) for x, y in curves if len(x)]
    if not xy:
        return None
    lo, hi = max(x[0] for x, _ in xy), min(x[-1] for x, _ in xy)
    if hi < lo:
        return None
    if hi == lo:
        grid = np.asarray([lo])
    elif log and lo > 0:
        grid = np.geomspace(lo, hi, points)
    else:
        grid = np.linspace(lo, hi, points)
    grid[0], grid[-1] = lo, hi  # exact ends (geomspace rounds)
    ys = np.stack([np.interp(grid, x, y) for x, y in xy])
    if len(xy) == 1:
        return Band(grid, ys[0], None, None, 1)
    half = np.asarray([mean_ci(col).half_width for col in ys.T], dtype=float)
    mean = ys.mean(axis=0)
    return Band(grid, mean, mean - half, mean + half, len(xy))
