"""The metric registry: every metric's label and direction, and its statistics against its corpus score.

A new metric is registered in one family module and listed here with a hand-computed example.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftbench.metrics import (
    METRICS, ROUGE_KEYS, MetricSpec, Registry, SummableMetric, bleu, classification_metrics, lower_is_better, metric_for,
    metric_label, rouge, score_metric,
)
from peftbench.metrics.bleu import streams

# name -> (label, higher is better)
EXPECTED = {
    "accuracy": ("accuracy", True), "macro_f1": ("macro-F1", True), "macro_precision": ("macro-P", True),
    "macro_recall": ("macro-R", True), "rouge1": ("rouge1", True), "rouge2": ("rouge2", True),
    "rougeL": ("rougeL", True), "rougeLsum": ("rougeLsum", True), "bleu1": ("bleu1", True), "bleu2": ("bleu2", True),
    "bleu3": ("bleu3", True), "bleu4": ("bleu4", True), "loss": ("loss", False), "unmatched": ("unmatched", False),
}

CLASS_REFS, CLASS_PREDS = [0, 1, 2, 1], [0, 2, 2, 1]
# class 0: tp 1, predicted 1, gold 1; class 1: 1, 1, 2; class 2: 1, 2, 1
CLASS_HAND = {"accuracy": 3 / 4, "macro_f1": (1 + 2 / 3 + 2 / 3) / 3, "macro_precision": (1 + 1 + 1 / 2) / 3,
              "macro_recall": (1 + 1 / 2 + 1) / 3}
TEXT_HYPS = ["the cat sat", "a dog"]
TEXT_REFS = [["the cat ran"], ["a cat", "a dog"]]  # the second example takes its best reference
ROUGE_HAND = {"rouge1": (2 / 3 + 1) / 2, "rouge2": (1 / 2 + 1) / 2, "rougeL": (2 / 3 + 1) / 2, "rougeLsum": (2 / 3 + 1) / 2}
BLEU_HYP, BLEU_REF = ["the cat sat on the mat"], [["the cat sat on a mat"]]
# clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty
BLEU_HAND = {"bleu1": 5 / 6, "bleu2": (5 / 6 * 3 / 5) ** (1 / 2), "bleu3": (5 / 6 * 3 / 5 * 2 / 4) ** (1 / 3),
             "bleu4": (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4)}


def example(name: str) -> tuple[list[Any], list[Any], float]:
    """references, predictions and the hand-computed score of a metric scored from predictions."""
    if name in CLASS_HAND:
        return CLASS_REFS, CLASS_PREDS, CLASS_HAND[name]
    if name in ROUGE_HAND:
        return TEXT_REFS, TEXT_HYPS, ROUGE_HAND[name]
    return BLEU_REF, BLEU_HYP, BLEU_HAND[name]


def summable(name: str) -> SummableMetric:
    spec = METRICS[name]
    assert isinstance(spec, SummableMetric)
    return spec


def test_every_metric_has_its_label_and_direction() -> None:
    assert set(METRICS) == set(EXPECTED)
    for name, (label, higher) in EXPECTED.items():
        spec = METRICS[name]
        assert isinstance(spec, MetricSpec) and spec.name == name
        assert metric_label(name) == spec.label == label
        assert spec.higher_is_better is higher and lower_is_better(name) is (not higher)
    assert metric_label("old_metric") == "old_metric" and not lower_is_better("old_metric")  # older stored runs


@pytest.mark.parametrize("name", [n for n in EXPECTED if isinstance(METRICS[n], SummableMetric)])
def test_aggregate_of_statistics_is_the_corpus_score(name: str) -> None:
    refs, preds, hand = example(name)
    spec = summable(name)
    stats = spec.stats(refs, preds)
    assert stats.shape[0] == len(refs)
    assert spec.aggregate(stats) == pytest.approx(hand, abs=1e-12)
    assert spec.score(refs, preds) == pytest.approx(hand, abs=1e-12)
    assert float(spec.from_sums(stats.sum(axis=0, keepdims=True), len(refs))[0]) == pytest.approx(hand, abs=1e-12)
    kind = spec.task_kinds[0]
    assert metric_for(kind, name)(refs, preds) == pytest.approx(hand, abs=1e-12)


def test_the_tasks_corpus_functions_read_the_registry() -> None:
    assert classification_metrics(CLASS_REFS, CLASS_PREDS) == pytest.approx(CLASS_HAND, abs=1e-12)
    # a prediction naming no label (-1) is wrong, not a class, when the labels are given
    out = classification_metrics([0, 1, 1], [0, -1, 1], labels=[0, 1])
    assert out == pytest.approx({"accuracy": 2 / 3, "macro_f1": (1 + 2 / 3) / 2, "macro_precision": 1.0,
                                 "macro_recall": (1 + 1 / 2) / 2}, abs=1e-12)
    assert rouge(TEXT_HYPS, TEXT_REFS) == pytest.approx(ROUGE_HAND, abs=1e-12)
    assert bleu(BLEU_HYP, BLEU_REF) == pytest.approx(BLEU_HAND, abs=1e-12)
    assert score_metric("accuracy", [0, 1, 2, 3], [0, 1, 0, 0]) == 0.5
    # the bootstrap's scorer gives exactly the task's number: one code path
    scores = rouge(TEXT_HYPS * 5, TEXT_REFS * 5)
    assert all(metric_for("summarization", k)(TEXT_REFS * 5, TEXT_HYPS * 5) == scores[k] for k in ROUGE_KEYS)


def test_scores_that_predictions_do_not_give_are_refused() -> None:
    for name in ("loss", "unmatched", "nosuch"):
        with pytest.raises(ValueError, match="not scored from predictions"):
            score_metric(name, [0], [0])
        with pytest.raises(ValueError, match="cannot be scored"):
            metric_for("classification", name)
    with pytest.raises(ValueError, match="cannot be scored"):
        metric_for("distractors", "rouge1")  # distractors report ROUGE-L only


def test_a_registry_takes_a_name_once() -> None:
    reg: Registry[int] = Registry("thing")
    assert reg.register("a", 1) == 1 and "a" in reg and reg["a"] == 1 and reg.get("b") is None
    assert list(reg) == ["a"] and len(reg) == 1
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        reg.register("a", 2)


def test_a_bound_scorer_has_its_own_labels_and_cache() -> None:
    spec = summable("macro_f1")
    bound = spec.bind([0, 1, 2, 3])
    assert bound is not spec and spec.labels is None and bound.labels == [0, 1, 2, 3]
    assert bound([0, 1], [0, 1]) == pytest.approx(0.5)  # two classes never seen score 0
    text = metric_for("summarization", "rougeL")
    text(TEXT_REFS, TEXT_HYPS)
    assert "_cache" in text.__dict__ and "_cache" not in METRICS["rougeL"].__dict__


# -- statistics summed over any resample give that resample's score ----------------------
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "runs", "away", "red", "big"]
sentence = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join)


@st.composite
def labelled(draw: st.DrawFn) -> tuple[list[int], list[int], list[int]]:
    n = draw(st.integers(1, 30))
    refs = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    preds = draw(st.lists(st.integers(-1, 3), min_size=n, max_size=n))
    return refs, preds, draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2 * n))


@st.composite
def texts(draw: st.DrawFn) -> tuple[list[list[str]], list[str], list[int]]:
    n = draw(st.integers(1, 8))
    refs = draw(st.lists(st.lists(sentence, min_size=1, max_size=2), min_size=n, max_size=n))
    preds = draw(st.lists(sentence, min_size=n, max_size=n))
    return refs, preds, draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2 * n))


def assert_resample_scores(spec: SummableMetric, refs: list[Any], preds: list[Any], idx: list[int]) -> None:
    counts = np.bincount(idx, minlength=len(refs)).astype(float)
    from_stats = float(spec.from_sums(counts[None, :] @ spec.stats(refs, preds), len(idx))[0])
    assert from_stats == pytest.approx(spec.score([refs[i] for i in idx], [preds[i] for i in idx]), abs=1e-9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labelled())
def test_class_statistics_over_a_resample_score_it(data: tuple[list[int], list[int], list[int]]) -> None:
    refs, preds, idx = data
    for name in ("accuracy", "macro_f1", "macro_precision", "macro_recall"):
        # macro scores average over fixed classes: sklearn's default would take a resample's own
        assert_resample_scores(summable(name).bind([0, 1, 2, 3]), refs, preds, idx)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts())
def test_text_statistics_over_a_resample_score_it(data: tuple[list[list[str]], list[str], list[int]]) -> None:
    from sacrebleu.metrics import BLEU

    refs, preds, idx = data
    for name in (*ROUGE_KEYS, "bleu1", "bleu2", "bleu3", "bleu4"):
        assert_resample_scores(summable(name), refs, preds, idx)
    sub_refs, sub_preds = [refs[i] for i in idx], [preds[i] for i in idx]
    for n in (1, 2, 3, 4):  # and sacrebleu's own corpus score agrees
        direct = BLEU(max_ngram_order=n, effective_order=True).corpus_score(sub_preds, streams(sub_refs)).score / 100
        assert bleu(sub_preds, sub_refs)[f"bleu{n}"] == pytest.approx(direct, abs=1e-12)


@settings(max_examples=200, deadline=None, database=None)
@given(data=labelled(), bound=st.booleans())
def test_macro_scores_equal_sklearns_to_the_last_bit(data: tuple[list[int], list[int], list[int]], bound: bool) -> None:
    """Issue 14: the macro scores no longer call sklearn (1.4 s to import in every run); they must not move."""
    from sklearn.metrics import f1_score, precision_score, recall_score

    refs, preds, _ = data
    labels = [0, 1, 2, 3] if bound else None
    kw = {"labels": labels} if bound else {}
    for name, fn in (("macro_f1", f1_score), ("macro_precision", precision_score), ("macro_recall", recall_score)):
        assert summable(name).bind(labels).score(refs, preds) == float(fn(refs, preds, average="macro", zero_division=0, **kw))


def test_scoring_a_classification_does_not_import_sklearn() -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from peftbench.metrics.classification import classification_metrics; "
            "classification_metrics([0, 1, 2], [0, 2, 2]); print('sklearn' in sys.modules)")
    src = str(Path(__file__).parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": src})
    assert out.stdout.strip() == "False"
