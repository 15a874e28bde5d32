"""Comparison statistics against values computed by hand or with known answers."""

from __future__ import annotations

import math

import pytest

from peftbench.metrics import classification_metrics, metric_for
from peftbench.stats import mean_ci, paired_bootstrap


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
    macro_f1 = metric_for("classification", "macro_f1", labels=[0, 1, 2])  # sklearn-equal, tested below
    res = paired_bootstrap(refs, a, b, macro_f1, resamples=300)
    assert res.delta > 0 and res.low <= 0 < res.high + 1e-12 and res.p_value > 0.05 and not res.distinguishable
    # the same seed gives the same answer
    assert paired_bootstrap(refs, a, b, macro_f1, resamples=300) == res


def test_bad_lengths_refused() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap([0, 1], [0], [0, 1], accuracy)


# -- seed-aware bootstrap and task metrics from stored predictions -----------------------
import numpy as np  # noqa: E402
from sklearn.metrics import f1_score, precision_score, recall_score  # noqa: E402

from peftbench.metrics import SummableMetric, bleu, rouge  # noqa: E402
from peftbench.stats import paired_bootstrap_seeds  # noqa: E402


def noisy(refs: list[int], wrong: float, seed: int, k: int = 4) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int((r + 1 + rng.integers(0, k - 1)) % k) if rng.random() < wrong else r for r in refs]


def test_metric_for_matches_the_tasks_metrics() -> None:
    refs = [i % 4 for i in range(97)]
    preds = noisy(refs, 0.35, 0)
    preds[3] = -1  # a text-to-text output naming no label
    for name, fn in (("macro_f1", f1_score), ("macro_precision", precision_score), ("macro_recall", recall_score)):
        assert metric_for("classification", name)(refs, preds) == pytest.approx(fn(refs, preds, average="macro", zero_division=0))
        labelled = metric_for("classification", name, labels=range(5))  # a label never seen scores 0, as sklearn does
        assert labelled(refs, preds) == pytest.approx(fn(refs, preds, average="macro", zero_division=0, labels=list(range(5))))
    assert metric_for("classification", "accuracy")(refs, preds) == pytest.approx(classification_metrics(refs, preds)["accuracy"])
    assert metric_for("multiple_choice", "accuracy")([0, 1, 2, 3], [0, 1, 0, 0]) == 0.5
    hyps = ["the cat sat on the mat", "a dog ran off", "hello there world. bye now"]
    refs_txt = [["the cat sat on a mat"], ["a dog ran away", "the dog ran"], ["hi world. bye."]]
    for n in (1, 2, 3, 4):
        assert metric_for("distractors", f"bleu{n}")(refs_txt, hyps) == pytest.approx(bleu(hyps, refs_txt)[f"bleu{n}"])
    scores = rouge(hyps, refs_txt)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert metric_for("summarization", key)(refs_txt, hyps) == pytest.approx(scores[key])
    assert metric_for("distractors", "rougeL")(refs_txt, hyps) == pytest.approx(scores["rougeL"])
    for kind, name in (("classification", "loss"), ("summarization", "bleu4"), ("mystery", "accuracy")):
        with pytest.raises(ValueError, match="cannot be scored"):
            metric_for(kind, name)


def test_seed_bootstrap_agrees_with_the_plain_one_for_one_seed() -> None:
    refs = [i % 3 for i in range(150)]
    a, b = noisy(refs, 0.2, 1, 3), noisy(refs, 0.3, 2, 3)
    f1 = metric_for("classification", "macro_f1")
    fast = paired_bootstrap_seeds(refs, [a], [b], f1, resamples=120, seed=3)
    slow = paired_bootstrap(refs, a, b, lambda r, p: f1_score(r, p, average="macro", zero_division=0), resamples=120, seed=3)
    assert fast.delta == pytest.approx(slow.delta) and fast.low == pytest.approx(slow.low) and fast.high == pytest.approx(slow.high)
    assert fast.p_value == pytest.approx(slow.p_value)
    # a plain callable takes the slow path with the same draws
    generic = paired_bootstrap_seeds(refs, [a], [b], lambda r, p: f1(r, p), resamples=120, seed=3)
    assert generic.low == pytest.approx(fast.low) and generic.high == pytest.approx(fast.high)


def test_seed_bootstrap_scores_the_mean_over_seeds() -> None:
    refs = [i % 4 for i in range(300)]
    good = [noisy(refs, 0.15, s) for s in range(3)]
    bad = [noisy(refs, 0.5, 10 + s) for s in range(3)]
    acc = metric_for("classification", "accuracy")
    res = paired_bootstrap_seeds(refs, good, bad, acc, resamples=500)
    expected = np.mean([acc(refs, p) for p in good]) - np.mean([acc(refs, p) for p in bad])
    assert res.delta == pytest.approx(expected) and res.distinguishable and res.p_value < 0.01
    assert res.low < res.delta < res.high and res.resamples == 500
    same = paired_bootstrap_seeds(refs, good, [list(p) for p in good], metric_for("classification", "macro_f1"), resamples=200)
    assert same.delta == 0 and same.low == same.high == 0 and same.p_value == 1.0 and not same.distinguishable
    # seeds of one method differ, but the methods are the same kind of noisy: no difference found
    twins = paired_bootstrap_seeds(refs, [noisy(refs, 0.3, s) for s in range(3)], [noisy(refs, 0.3, 20 + s) for s in range(2)],
                                   acc, resamples=400)
    assert not twins.distinguishable
    with pytest.raises(ValueError):
        paired_bootstrap_seeds(refs, [refs[:-1]], good, acc)
    with pytest.raises(ValueError):
        paired_bootstrap_seeds(refs, [], good, acc)
    assert isinstance(acc, SummableMetric) and "accuracy" in repr(acc)


def test_seed_bootstrap_is_fast_for_corpus_metrics() -> None:
    import time

    refs = [i % 6 for i in range(5000)]
    seeds_a, seeds_b = [noisy(refs, 0.3, s, 6) for s in range(3)], [noisy(refs, 0.32, 9 + s, 6) for s in range(3)]
    t0 = time.perf_counter()
    res = paired_bootstrap_seeds(refs, seeds_a, seeds_b, metric_for("classification", "macro_f1"), resamples=1000)
    assert time.perf_counter() - t0 < 10  # 3+3 seeds x 1000 resamples x 5000 examples; the slow path takes minutes
    assert res.resamples == 1000 and res.low < res.delta < res.high
