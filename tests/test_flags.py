"""Degenerate and unconverged runs (issue 16 item 5): detection on synthetic runs, their effect on
ranking, and what `peftbench report` and `compare --json` show for them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.metrics import classification_metrics
from peftbench.report.aggregate import aggregate
from peftbench.report.flags import collapsed, last_quarter_gain, non_finite, unconverged
from peftbench.store import Store
from test_report import LABELS, add_run, config


# -- detection -------------------------------------------------------------------------
def test_one_class_for_95_percent_is_degenerate() -> None:
    assert collapsed([1] * 96 + [0] * 4, labels=LABELS) == "predicts 'joy' for 96% of test examples"
    assert collapsed([1] * 94 + [0, 2, 3, 0, 2, 3]) is None
    assert collapsed([2] * 20) == "predicts 2 for 100% of test examples"  # no label names: the value itself
    assert collapsed([[1, 2]] * 19 + [[0]]) is not None  # unhashable predictions count too
    assert collapsed([3]) is None  # one example says nothing
    assert collapsed([0] * 20, references=[0] * 19 + [1]) == "predicts 0 for 100% of test examples (it is 95% of the references)"


def test_the_same_generated_text_for_every_input_is_degenerate() -> None:
    assert collapsed(["the cat", "the cat ", "the cat"], generation=True) == \
        "generates the same text for every test input ('the cat')"
    assert collapsed(["the cat"] * 99 + ["a dog"], generation=True) is None  # text must be the same for all


def test_non_finite_loss_or_score() -> None:
    curve = [{"train_loss": 1.2}, {"train_loss": float("nan")}]
    assert non_finite(curve) == "training loss ended non-finite (nan)"
    assert non_finite([{"train_loss": 1.2}], {"macro_f1": float("inf")}) == "final macro_f1 is non-finite"
    assert non_finite([{"train_loss": float("nan")}, {"train_loss": 0.9}], {"macro_f1": 0.5}) is None  # it recovered


def curve_of(ys: list[float], step: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(1, len(ys) + 1) * step, np.asarray(ys, float)


def test_last_quarter_gain() -> None:
    assert last_quarter_gain(*curve_of([0.2, 0.4, 0.5, 0.53])) == pytest.approx(0.03)  # ¾ of 4 = 3: 0.50 -> 0.53
    assert last_quarter_gain(*curve_of([0.2, 0.6, 0.5, 0.55])) == pytest.approx(0.0)  # best so far: no new best
    assert last_quarter_gain(*curve_of([0.9, 0.7, 0.6, 0.5]), lower_is_better=True) == pytest.approx(0.1)
    assert last_quarter_gain(np.array([4.0]), np.array([0.5])) is None  # nothing before the last quarter
    assert last_quarter_gain(np.array([0.0]), np.array([0.5])) is None  # nothing trained


def test_unconverged_with_one_seed_uses_two_points() -> None:
    rising = unconverged({0: curve_of([0.2, 0.4, 0.5, 0.53])}, "macro_f1")
    assert rising is not None and rising.kind == "unconverged"
    assert "+0.030 over the last quarter" in rising.reason and "0.02 with one seed" in rising.reason
    assert unconverged({0: curve_of([0.2, 0.4, 0.5, 0.51])}, "macro_f1") is None


def test_unconverged_with_seeds_uses_their_interval() -> None:
    tight = {s: curve_of([0.2, 0.4, 0.5, 0.53 + d]) for s, d in enumerate((0.0, 0.001, -0.001))}
    flag = unconverged(tight, "macro_f1")
    assert flag is not None and "95% CI over 3 seeds" in flag.reason
    spread = {s: curve_of([0.2, 0.4, v - 0.03, v]) for s, v in enumerate((0.40, 0.55, 0.70))}  # CI ±0.37
    assert unconverged(spread, "macro_f1") is None
    falling = unconverged({0: curve_of([2.0, 1.5, 1.2, 1.0])}, "loss", lower_is_better=True)
    assert falling is not None and "still falling" in falling.reason


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=10))
def test_gain_is_never_negative_and_bounded_by_the_range(ys: list[float]) -> None:
    g = last_quarter_gain(*curve_of(ys))
    assert g is not None and 0.0 <= g <= max(ys) - min(ys) + 1e-12


# -- in the report -----------------------------------------------------------------------
REFS = [i % 4 for i in range(40)]


def run(store: Store, method: str, seed: int, preds: list[int], ys: list[float], last_loss: float = 0.5) -> str:
    flops = [10.0, 20.0, 30.0, 40.0]
    curve = [{"step": i + 1, "tokens": 100 * (i + 1), "train_flops": f, "seconds": 1.0 + i,
              "train_loss": last_loss if i == 3 else 1.0, "metrics": {"macro_f1": y, "accuracy": y}}
             for i, (f, y) in enumerate(zip(flops, ys))]
    result: dict[str, Any] = {
        "test": classification_metrics(REFS, preds), "validation": curve[-1]["metrics"], "metrics": ["accuracy", "macro_f1"],
        "select_metric": "macro_f1", "best_step": 4, "lr": 1e-3, "optimizer": "adamw",
        "costs": {"params_total": 1000, "params_trainable": 10, "trainable_pct": 1.0, "train_flops": 40.0, "train_seconds": 4.0},
        "budget": {"kind": "steps", "value": 4.0}, "task": {"kind": "classification", "family": "encoder", "labels": LABELS},
        "device": "cpu", "versions": {}, "samples": [],
    }
    return add_run(store, config(method, {}, seed, 1e-3), result, curve, {"predictions": preds, "references": REFS})


def mostly_right(acc: float) -> list[int]:
    wrong = int(round((1 - acc) * len(REFS)))
    return [(r + 1) % 4 if i < wrong else r for i, r in enumerate(REFS)]


def flagged_store(root: Path) -> Path:
    """full: best on test but its loss ended nan; ia3: always 'anger'; lora: fine but still rising; prompt: flat."""
    store = Store(root)
    run(store, "full", 0, mostly_right(0.9), [0.5, 0.6, 0.7, 0.8], last_loss=float("nan"))
    run(store, "ia3", 0, [0] * len(REFS), [0.1, 0.1, 0.1, 0.1])
    run(store, "lora", 0, mostly_right(0.7), [0.2, 0.3, 0.62, 0.7])  # +0.08 in the last quarter
    run(store, "prompt_tuning", 0, mostly_right(0.6), [0.55, 0.58, 0.6, 0.6])  # leads until lora passes it at 30
    store.close()
    return root


def test_degenerate_cells_are_never_best_and_unconverged_leaders_are_said(tmp_path: Path) -> None:
    rep = aggregate(flagged_store(tmp_path / "res"), resamples=100)
    s = rep.sections[0]
    by = {c.label: c for c in s.cells}
    assert [c.label for c in s.cells] == ["lora", "prompt_tuning", "full", "ia3"]  # degenerate last
    assert s.best is by["lora"] and by["lora"].rank == 1 and by["prompt_tuning"].rank == 2
    for name, why in (("full", "training loss ended non-finite (nan)"), ("ia3", "predicts 'anger' for 100% of test examples (it is 25% of the references)")):
        c = by[name]
        assert (c.rank, c.mark, c.near_best) == (None, "-", False)
        assert [(f.kind, f.reason.split(", in 1/1")[0]) for f in c.flags] == [("degenerate", why)]
    assert [f.kind for f in by["lora"].flags] == ["unconverged"] and not by["prompt_tuning"].flags
    bb = s.by_budget
    assert bb.excluded == ["full", "ia3"] and [r.leader for r in bb.rows] == ["prompt_tuning"] * 2 + ["lora"] * 2
    assert bb.last_change == 30.0
    assert bb.verdict.startswith("lora is among the leading methods but unconverged")
    assert "leader last changed at 30 FLOP of training (0.75 of the budget: prompt_tuning → lora)" in bb.verdict
    doc = json.loads(json.dumps(rep.to_dict(), default=str))  # what --json writes
    cells = {c["label"]: c for c in doc["sections"][0]["cells"]}
    assert cells["ia3"]["flags"][0]["kind"] == "degenerate" and cells["ia3"]["rank"] is None
    assert doc["sections"][0]["by_budget"]["rows"][-1]["leader"] == "lora"


def test_report_command_prints_the_by_budget_table_and_flag_lines(tmp_path: Path) -> None:
    res = flagged_store(tmp_path / "res")
    out = CliRunner().invoke(app, ["report", "--results-dir", str(res), "--resamples", "100", "--json", str(tmp_path / "r.json"),
                                   "--markdown", str(tmp_path / "r.md"), "--csv", str(tmp_path / "r.csv")],
                             catch_exceptions=False, terminal_width=250)
    assert out.exit_code == 0, out.output
    text = " ".join(out.stdout.split())  # rich wraps long lines to the terminal
    assert "winner by budget, decided on validation curves" in text
    assert "leader (validation)" in text and "¾ · 30 FLOP" in text
    assert "flag: full — degenerate: training loss ended non-finite (nan), in 1/1 seed; never ranked best" in text
    assert "flag: ia3 — degenerate: predicts 'anger' for 100% of test examples" in text
    assert "flag: lora — unconverged: validation macro-F1 still rising" in text
    assert "verdict: lora is among the leading methods but unconverged" in text
    md = (tmp_path / "r.md").read_text()
    assert "winner by budget" in md and "> **Flag:** ia3 — degenerate" in md and "> **Verdict:** lora is among" in md
    assert "degenerate" in json.loads((tmp_path / "r.json").read_text())["sections"][0]["cells"][-1]["flags"][0]["kind"]
    assert "never ranked best" in (tmp_path / "r.csv").read_text()


def test_html_report_shows_the_table_the_flags_and_the_plot(tmp_path: Path) -> None:
    res = flagged_store(tmp_path / "res")
    out = CliRunner().invoke(app, ["report", "--results-dir", str(res), "--resamples", "100",
                                   "--html", str(tmp_path / "r.html"), "--plots", str(tmp_path / "plots")], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    html = (tmp_path / "r.html").read_text()
    assert "winner by budget, decided on validation curves" in html and "Flag: ia3 — degenerate" in html
    assert "Winner by budget (decided on validation curves)" in html  # the plot's figure
    assert (tmp_path / "plots" / "s1-winner-by-budget.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_json_carries_the_winner_by_budget_and_flags(tiny_model: str, tiny_data: Path, tmp_path: Path) -> None:
    args = ["compare", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--batch-size", "8",
            "--eval-batch-size", "16", "--results-dir", str(tmp_path), "--methods", "head,lora", "--steps", "4",
            "--eval-every", "1", "--json"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (section,) = json.loads(res.stdout)["sections"]
    bb = section["by_budget"]
    assert [r["fraction"] for r in bb["rows"]] == [0.25, 0.5, 0.75, 1.0] and bb["reference_flops"] > 0
    assert bb["basis"].startswith("validation curves")
    for flag in section["flags"]:  # a tiny random model may well collapse: each flag says why in one line
        assert flag["kind"] in ("degenerate", "unconverged") and "\n" not in flag["reason"] and flag["reason"]
    leaders = {r["leader"] for r in bb["rows"]} - {None}
    if not leaders:  # the tiny random model often collapses: then every cell is degenerate
        assert sorted(bb["excluded"]) == ["head", "lora"]
    assert leaders <= {"head", "lora"} and not leaders & set(bb["excluded"])
    assert not math.isnan(bb["reference_flops"])


@pytest.mark.parametrize("width", [70, 80, 100, 120])
def test_terminal_tables_fold_to_the_width_and_never_crop_the_flags(tmp_path: Path, width: int) -> None:
    """rich crops (not folds) a table's right edge when columns' minimum widths leave no room: the flags
    column went missing at 120 columns in the README's main job."""
    import io

    from rich.console import Console

    from peftbench.report.command import print_report

    buf = io.StringIO()
    print_report(aggregate(flagged_store(tmp_path / "res"), resamples=100), Console(width=width, file=buf, markup=False))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    text = buf.getvalue()
    assert text.count("unconv.") == 1 and text.count("degen.") == 2 and "flags" in text
