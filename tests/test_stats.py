"""Comparison statistics against values computed by hand or with known answers."""

from __future__ import annotations

import math

import pytest

from peftbench.compare.stats import mean_ci, paired_bootstrap
from peftbench.tasks.metrics import classification_metrics


def accuracy(refs, preds) -> float:
    return sum(r == p for r, p in zip(refs, preds)) / len(refs)


def test_mean_ci_matches_the_t_interval() -> None:
    ci = mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, df 2) = 4.302653
    assert ci.mean == 2.0 and ci.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert ci.low == pytest.approx(2 - 2.484138, abs=1e-5) and ci.n == 3
    wide = mean_ci([0.5, 0.6, 0.7, 0.8], confidence=0.99)  # sd 0.129099, t(0.995, 3) = 5.840909
    assert wide.half_width == pytest.approx(5.840909 * 0.129099 / 2, rel=1e-4)
    assert mean_ci([0.7]).half_width is None and str(mean_ci([0.7])) == "0.7000"
    assert str(ci) == "2.0000 ± 2.4841"
    with pytest.raises(ValueError):
        mean_ci([])


def test_identical_predictions_cannot_be_told_apart() -> None:
    refs = [0, 1, 1, 0, 1, 0, 0, 1]
    preds = [0, 1, 0, 0, 1, 1, 0, 1]
    res = paired_bootstrap(refs, preds, preds, accuracy, resamples=200)
    assert res.delta == 0 and res.low == res.high == 0 and res.p_value == 1.0 and not res.distinguishable


def test_a_clearly_better_method_is_distinguishable() -> None:
    refs = [i % 3 for i in range(200)]
    good = list(refs)
    bad = [(r + 1) % 3 if i % 2 else r for i, r in enumerate(refs)]  # half wrong
    res = paired_bootstrap(refs, good, bad, accuracy, resamples=500, seed=1)
    assert res.delta == pytest.approx(0.5) and res.distinguishable and res.p_value < 0.01
    assert res.low > 0.35 and res.high < 0.65  # binomial sd of the difference is about 0.035
    flipped = paired_bootstrap(refs, bad, good, accuracy, resamples=500, seed=1)
    assert flipped.delta == pytest.approx(-0.5) and flipped.high < 0


def test_a_one_example_difference_is_not_significant_and_corpus_metrics_work() -> None:
    refs = [0, 1, 2] * 20
    a = list(refs)
    b = list(refs)
    b[0] = 1  # one error in 60
    macro_f1 = lambda r, p: classification_metrics(list(r), list(p))["macro_f1"]  # noqa: E731
    res = paired_bootstrap(refs, a, b, macro_f1, resamples=300)
    assert res.delta > 0 and res.low <= 0 < res.high + 1e-12 and res.p_value > 0.05 and not res.distinguishable
    # the same seed gives the same answer
    assert paired_bootstrap(refs, a, b, macro_f1, resamples=300) == res


def test_bad_lengths_refused() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap([0, 1], [0], [0, 1], accuracy)
