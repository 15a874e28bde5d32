"""Learning-curve summaries against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from peftbench.stats.curves import aulc, band, curve_xy, flops_to_fraction, flops_to_reach, target_score


def point(flops: float, score: float, step: int = 0, loss: float | None = 1.0) -> dict:
    return {"step": step, "tokens": 0, "train_flops": flops, "seconds": 0.0, "train_loss": loss, "metrics": {"macro_f1": score}}


def test_aulc_is_the_mean_score_over_progress() -> None:
    # Points at 25/50/75/100% of the budget. Progress 0..0.25 is held at the first score (0.4):
    # 0.25*0.4 + 0.25*(0.4+0.6)/2 + 0.25*(0.6+0.7)/2 + 0.25*(0.7+0.8)/2 = 0.1 + 0.125 + 0.1625 + 0.1875
    assert aulc([1, 2, 3, 4], [0.4, 0.6, 0.7, 0.8]) == pytest.approx(0.575)
    # Uneven spacing: x normalised by its last value (10): 0.1*0.5 + 0.9*(0.5+1.0)/2 = 0.725
    assert aulc([1e12, 1e13], [0.5, 1.0]) == pytest.approx(0.725)
    assert aulc([5.0], [0.3]) == pytest.approx(0.3)  # one point: a flat curve
    assert aulc([0.0], [0.42]) == 0.42  # trains nothing
    assert aulc([2, 4], [0.7, 0.7]) == pytest.approx(0.7)  # a constant curve's mean is the constant
    with pytest.raises(ValueError):
        aulc([], [])


def test_flops_to_reach_interpolates_between_points() -> None:
    xs, ys = [100, 200, 300, 400], [0.2, 0.5, 0.7, 0.8]
    assert flops_to_reach(xs, ys, 0.6) == pytest.approx(250)  # halfway from 0.5 (200) to 0.7 (300)
    assert flops_to_reach(xs, ys, 0.5) == pytest.approx(200)  # exactly at a point
    assert flops_to_reach(xs, ys, 0.1) == 100  # the first point already there: no earlier claim
    assert flops_to_reach(xs, ys, 0.9) is None
    # the first crossing counts, even if the curve dips afterwards
    assert flops_to_reach([1, 2, 3, 4], [0.1, 0.9, 0.3, 0.95], 0.5) == pytest.approx(1.5)
    # losses fall: 1.0 -> 0.5 between 10 and 20 reaches 0.6 at 18
    assert flops_to_reach([10, 20], [1.0, 0.5], 0.6, lower_is_better=True) == pytest.approx(18)
    assert target_score(0.8) == pytest.approx(0.72) and target_score(0.45, 0.9, True) == pytest.approx(0.5)


def test_flops_to_fraction_reads_stored_curves() -> None:
    curve = [point(4e12, 0.8, 64), point(1e12, 0.3, 16), point(2e12, 0.6, 32)]  # out of order on purpose
    xs, ys = curve_xy(curve, "macro_f1")
    assert list(xs) == [1e12, 2e12, 4e12] and list(ys) == [0.3, 0.6, 0.8]
    # 0.9 of a best final score 0.8 is 0.72: 0.6 + 0.6*(0.8-0.6) -> 2e12 + 0.6*2e12
    assert flops_to_fraction(curve, target_score(0.8), "macro_f1") == pytest.approx(3.2e12)
    assert flops_to_fraction(curve, 0.9, "macro_f1") is None
    assert flops_to_fraction(curve, 0.5, "accuracy") is None  # a metric the curve lacks
    assert list(curve_xy(curve, "train_loss")[1]) == [1.0, 1.0, 1.0]


def test_band_interpolates_seeds_onto_a_common_grid() -> None:
    a = ([1e12, 2e12, 4e12], [0.2, 0.4, 0.8])
    b = ([1.2e12, 2e12, 3.5e12], [0.4, 0.6, 0.9])
    res = band([a, b], points=5)
    assert res.n == 2 and res.x[0] == 1.2e12 and res.x[-1] == 3.5e12  # only where both seeds were measured
    assert np.allclose(np.diff(np.log(res.x)), math.log(3.5 / 1.2) / 4)  # log-spaced
    # at x=2e12 the seeds read 0.4 and 0.6 -> mean 0.5, t(0.975,1)=12.706 * sd 0.1414/sqrt(2)
    at = band([a, b], points=5, log=False)
    mid = band([([1, 2, 3], [0.4, 0.4, 0.4]), ([1, 2, 3], [0.6, 0.6, 0.6])], points=3, log=False)
    assert list(mid.x) == [1, 2, 3] and np.allclose(mid.mean, 0.5)
    assert np.allclose(mid.high - mid.mean, 12.7062 * 0.1, rtol=1e-4)
    assert at.low is not None and np.all(at.low <= at.mean) and np.all(at.mean <= at.high)
    one = band([a])
    assert one.n == 1 and one.low is None and one.mean[0] == pytest.approx(0.2)
    assert band([([1, 2], [0, 1]), ([3, 4], [0, 1])]) is None  # no shared range
    assert band([]) is None
