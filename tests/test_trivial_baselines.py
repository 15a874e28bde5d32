"""Issue 15 item 3: trivial baselines (majority class, uniform chance) in every classification and
multiple-choice table; ties ranked as ties; a collapsed method is called out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.metrics.trivial import choice_baselines, label_baselines, majority
from peftbench.report.aggregate import aggregate
from peftbench.store import Store
from test_report import classification_run


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=40), st.lists(st.integers(0, 3), min_size=1, max_size=40))
def test_majority_scores_as_sklearn_does(train, test):
    got = label_baselines(train, test, 4)["majority"]
    m = majority(train)
    assert train.count(m) == max(train.count(c) for c in set(train)) and all(train.count(c) < train.count(m) for c in set(train) if c < m)
    assert got["accuracy"] == accuracy_score(test, [m] * len(test))
    assert abs(got["macro_f1"] - f1_score(test, [m] * len(test), average="macro", zero_division=0)) < 1e-12


def test_chance_is_what_uniform_guessing_scores_on_average():
    rng = np.random.default_rng(0)
    test = [0] * 50 + [1] * 30 + [2] * 20
    chance = label_baselines([0, 1, 2], test, 3)["chance"]
    guesses = [f1_score(test, rng.integers(0, 3, len(test)), average="macro") for _ in range(3000)]
    assert chance["accuracy"] == 1 / 3
    assert abs(chance["macro_f1"] - np.mean(guesses)) < 0.01  # the ratio of expectations, close to the expectation


def test_choice_baselines():
    got = choice_baselines([2, 2, 1, 0], [2, 0, 2, 2], [4, 4, 5, 5])
    assert got["majority"] == {"accuracy": 0.75} and abs(got["chance"]["accuracy"] - 0.225) < 1e-12


def test_ties_share_a_rank_and_collapse_is_called_out(tmp_path: Path):
    refs = [0] * 60 + [1] * 25 + [2] * 15
    hard = np.zeros(len(refs))
    for root, baselines in ((tmp_path / "old", None), (tmp_path / "new", label_baselines(refs, refs, 3))):
        store = Store(root)
        for method in ("head", "lora", "ia3"):  # all three predict the majority class for everything
            classification_run(store, method, {}, 0.6, 1e11, 10, 1e9, 10, 4.0, 0, 1e-3, refs, hard, preds=[0] * len(refs),
                               baselines=baselines)
        classification_run(store, "full", {}, 0.7, 3e11, 10, 1e9, 10, 4.0, 0, 1e-4, refs, hard,
                           preds=refs[:90] + [0] * 10, baselines=baselines)
        for method in ("prompt", "adalora"):  # equal predictions, so equal scores
            classification_run(store, method, {}, 0.6, 1e11, 10, 1e9, 10, 4.0, 0, 1e-3, refs, hard,
                               preds=refs[:70] + [0] * 30, baselines=baselines)
        store.close()
    old = aggregate(tmp_path / "old", resamples=100).sections[0]
    assert old.baselines == {} and not any("majority" in n for n in old.notes)  # runs stored before: none invented
    section = aggregate(tmp_path / "new", resamples=100).sections[0]
    assert [(c.label, c.rank) for c in section.cells][0] == ("full", 1)
    assert [c.rank for c in section.cells[1:3]] == [2, 2]
    # issue 16: one class for every example is degenerate, so unranked (never best), with its reason
    assert [(c.rank, c.flags[0].kind) for c in section.cells[3:]] == [(None, "degenerate")] * 3
    assert [n for n in section.notes if "learned nothing usable" in n][0].startswith("head, lora, ia3 score no better")


def test_compare_tables_show_the_baselines(tiny_model, tiny_data, tmp_path):
    res = CliRunner().invoke(app, ["compare", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32",
                                   "--batch-size", "8", "--steps", "2", "--methods", "base,lora", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "(majority class)" in res.output and "(uniform chance)" in res.output
    assert "equal scores share a rank" in " ".join(res.output.split())
    stored = Store(tmp_path).list("done")[0].result["task"]["baselines"]
    assert set(stored) == {"majority", "chance"} and 0 < stored["majority"]["accuracy"] <= 1
