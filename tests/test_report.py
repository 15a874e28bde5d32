"""The report on synthetic stores: grouping by seed, intervals, ranking, LR search, exports, plots, HTML.

Stores are written through the real Store API with made-up but consistent results (test
metrics computed from the stored predictions), so nothing trains.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.metrics import classification_metrics
from peftbench.report.aggregate import aggregate
from peftbench.report.command import report
from peftbench.report.formats import to_csv, to_json, to_markdown
from peftbench.report.html import render
from peftbench.report.plots import pareto_front, section_plots
from peftbench.stats import mean_ci
from peftbench.stats.curves import aulc, curve_xy, flops_to_fraction
from peftbench.store import Predictions, RunOutput, RunResult, Store

LABELS = ["anger", "joy", "optimism", "sadness"]
# method name, params, accuracy, FLOPs per step, trainable params, peak memory, adapter bytes, latency ms
METHODS: list[tuple[str, dict[str, Any], float, float, int, float, int, float]] = [
    ("full", {}, 0.86, 3.1e11, 22_700_000, 1.3e9, 90_000_000, 4.1),
    ("lora", {"r": 8, "alpha": 16, "target_modules": ["query", "value"]}, 0.84, 2.1e11, 147_000, 6.1e8, 600_000, 4.6),
    ("ia3", {"target_modules": ["key", "value", "output.dense"]}, 0.55, 2.0e11, 10_000, 5.8e8, 41_000, 4.3),
]
STEPS = [16, 32, 48, 64]


def config(method: str, params: dict[str, Any], seed: int, lr: float | None, test: bool = True,
           kind: str = "classification", source: str = "builtin:tweet_eval_emotion") -> dict[str, Any]:
    cfg = RunConfig().canonical()
    cfg["method"] = {"name": method, "params": params}
    cfg["task"]["kind"] = kind
    cfg["task"]["data"]["source"] = source
    cfg["train"].update(seed=seed, lr=lr, steps=64, epochs=None, test=test)
    return cfg


def add_run(store: Store, cfg: dict[str, Any], result: dict[str, Any], curve: list[dict[str, Any]],
            predictions: dict[str, Any] | None) -> str:
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    run_id = store.begin(digest, cfg, cfg["method"]["name"], cfg["model"]["name"], cfg["task"]["kind"])
    staged = store.staging(run_id)
    preds = Predictions(**predictions) if predictions is not None else None
    store.finish(run_id, RunOutput(RunResult.from_dict(result, cfg), curve, preds), staged)
    return run_id


def class_preds(refs: list[int], acc: float, rng: np.random.Generator, hard: np.ndarray) -> list[int]:
    """Right on the easier examples first (errors correlate across methods, as in real runs)."""
    noise = hard + rng.normal(0, 0.15, len(refs))
    wrong = noise > np.quantile(noise, acc)
    return [int((r + 1 + rng.integers(0, 3)) % 4) if w else r for r, w in zip(refs, wrong)]


def classification_run(store: Store, method: str, params: dict[str, Any], acc: float, flops_step: float,
                       trainable: int, memory: float, adapter: int, latency: float, seed: int, lr: float | None,
                       refs: list[int], hard: np.ndarray, preds: list[int] | None = None, test: bool = True,
                       write_predictions: bool = True, baselines: dict[str, Any] | None = None) -> str:
    key = json.dumps([method, params, seed, lr], sort_keys=True).encode()
    rng = np.random.default_rng(int(hashlib.sha256(key).hexdigest()[:8], 16))  # the same numbers every session
    preds = preds if preds is not None else class_preds(refs, acc + rng.normal(0, 0.01), rng, hard)
    trains = flops_step > 0
    steps = STEPS if trains else [0]
    final_val = acc - 0.02 + rng.normal(0, 0.01)
    speed = 12 if method == "full" else 22
    curve = [{
        "step": s, "tokens": s * 32 * 40, "train_flops": int(s * flops_step), "seconds": s * 0.4,
        "train_loss": (1.4 * math.exp(-s / 30) + 0.3 + rng.normal(0, 0.02)) if trains else None,
        "metrics": {"macro_f1": final_val * (1 - 0.6 * math.exp(-s / speed)) if trains else final_val,
                    "accuracy": final_val + 0.02, "loss": 1.0 - final_val / 2},
    } for s in steps]
    test_metrics = classification_metrics(refs, preds) | {"loss": 0.6} if test else None
    samples = [{"input": f"tweet {i}: <b>so</b> happy & sad", "target": LABELS[refs[i]], "untuned": LABELS[(i * 3) % 4],
                "tuned": LABELS[preds[i]]} for i in range(4)] if test else []
    result = {
        "test": test_metrics, "validation": curve[-1]["metrics"], "metrics": ["accuracy", "macro_f1"],
        "select_metric": "macro_f1", "best_step": steps[-1], "lr": lr, "optimizer": "adamw",
        "costs": {"params_total": 22_700_000, "params_trainable": trainable, "trainable_pct": 100 * trainable / 22_700_000,
                  "train_flops": steps[-1] * flops_step * (1 + rng.normal(0, 0.002)), "train_seconds": 30 + rng.normal(0, 2),
                  "peak_memory_bytes": memory, "peak_memory_kind": "rss", "adapter_bytes": adapter, "eval_flops": 1e11,
                  "latency": {"b1_ms": latency + rng.normal(0, 0.1), "bN_ms": latency * 9, "batch": 32,
                              "throughput": 32000 / (latency * 9)}},
        "budget": {"kind": "steps", "value": 64.0},
        "task": {"kind": "classification", "family": "encoder", "labels": LABELS,
                 **({"baselines": baselines} if baselines else {})}, "device": "cpu",
        "versions": {}, "samples": samples,
    }
    pred_doc = {"predictions": preds, "references": refs} if test and write_predictions else None
    return add_run(store, config(method, params, seed, lr, test), result, curve, pred_doc)


def make_store(root: Path, n_test: int = 300, seeds: tuple[int, ...] = (0, 1, 2), base: bool = True,
               lr_search: bool = True, ablation: bool = False, copy: bool = False) -> Path:
    """3 methods x 3 seeds on one classification task, plus extras the tests ask for."""
    rng = np.random.default_rng(0)
    refs = [int(x) for x in rng.integers(0, 4, n_test)]
    hard = rng.random(n_test)
    store = Store(root)
    first_full: dict[int, list[int]] = {}
    for name, params, acc, fs, tp, mem, ad, lat in METHODS:
        for seed in seeds:
            classification_run(store, name, params, acc, fs, tp, mem, ad, lat, seed, 5e-4 if name != "full" else 5e-5, refs, hard)
            if name == "full":
                doc = json.loads((store.list()[-1].folder / "predictions.json").read_text())
                first_full[seed] = doc["predictions"]
    if copy:  # predictions identical to full's, seed by seed: the bootstrap cannot tell them apart
        for seed in seeds:
            classification_run(store, "adapter", {"reduction": 16}, 0.86, 2.2e11, 300_000, 6.5e8, 1_200_000, 5.0, seed,
                               1e-3, refs, hard, preds=first_full[seed])
    if base:
        classification_run(store, "base", {}, 0.30, 0.0, 0, 4.0e8, 0, 4.0, 0, None, refs, hard)
    if ablation:
        lora = METHODS[1]
        for r, acc in ((4, 0.80), (16, 0.85)):
            for seed in seeds[:2]:
                classification_run(store, "lora", {**lora[1], "r": r}, acc, lora[3], lora[4] * r // 8, lora[5], lora[6] * r // 8,
                                   lora[7], seed, 5e-4, refs, hard)
    if lr_search:
        for lr, acc in ((1e-4, 0.70), (5e-4, 0.83), (2e-3, 0.78)):
            for seed in (0, 1):
                classification_run(store, "lora", METHODS[1][1], acc, 2.1e11, 147_000, 6e8, 600_000, 4.6, seed, lr, refs,
                                   hard, test=False)
        for lr, acc in ((1e-3, 0.50), (1e-2, 0.56)):  # ia3 at another budget key: no test run shares its config
            classification_run(store, "ia3", {"target_modules": ["key"]}, acc, 2e11, 9_000, 5.8e8, 40_000, 4.3, 0, lr,
                               refs, hard, test=False)
    store.close()
    return root


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("report") / "res", copy=True, ablation=True)


@pytest.fixture(scope="module")
def rep(store_dir: Path):
    return aggregate(store_dir, resamples=400)


def cell(rep, label: str):
    return next(c for s in rep.sections for c in s.cells if c.label == label)


# -- aggregation -----------------------------------------------------------------------
def test_runs_group_into_cells_by_seed(rep, store_dir: Path) -> None:
    assert len(rep.sections) == 1
    s = rep.sections[0]
    assert s.title == "classification · builtin:tweet_eval_emotion · default" and s.select_metric == "macro_f1"
    labels = sorted(c.label for c in s.cells)
    assert labels == ["adapter", "base", "full", "ia3", "lora (r=16)", "lora (r=4)", "lora (r=8)"]
    full = cell(rep, "full")
    assert full.seeds == [0, 1, 2] and len(full.runs) == 3 and full.lr == 5e-5
    assert full.budget == {"kind": "steps", "value": 64.0}
    rows = [r for r in Store(store_dir).list("done") if r.method == "full"]
    f1 = [r.result["test"]["macro_f1"] for r in rows]
    assert full.test["macro_f1"] == mean_ci(f1)  # the interval is the seeds' Student-t interval
    assert full.costs["train_flops"] == mean_ci([r.result["costs"]["train_flops"] for r in rows])
    assert full.costs["latency.b1_ms"].n == 3 and full.costs["peak_memory_bytes"].half_width == 0
    assert cell(rep, "base").seeds == [0] and cell(rep, "base").test["macro_f1"].half_width is None


def test_best_is_ranked_first_and_the_bootstrap_marks_ties(rep) -> None:
    s = rep.sections[0]
    best = s.best
    assert best.rank == 1 and best.mark == "1" and best.vs_best is None
    assert best.test["macro_f1"].mean == max(c.test["macro_f1"].mean for c in s.cells)
    twin, other = (cell(rep, "adapter"), cell(rep, "full")) if best.label == "full" else (cell(rep, "full"), cell(rep, "adapter"))
    assert {best.label, twin.label} == {"full", "adapter"}  # identical predictions, identical scores
    assert twin.vs_best.delta == 0 and twin.near_best and twin.rank == 1 and twin.mark == "1"  # a tie shares the rank
    ia3 = cell(rep, "ia3")
    assert ia3.vs_best.distinguishable and ia3.vs_best.delta < -0.2 and ia3.vs_best.p_value < 0.01
    assert ia3.rank >= 3 and not ia3.near_best
    means = [c.test["macro_f1"].mean for c in s.cells]
    assert [c.rank for c in s.cells] == [1 + sum(m > x for m in means) for x in means]  # competition ranking: 1, 1, 3, ...
    assert "Paired bootstrap" in s.bootstrap


def test_curve_summaries(rep, store_dir: Path) -> None:
    s = rep.sections[0]
    best_val = max(c.validation["macro_f1"].mean for c in s.cells)
    assert s.target == pytest.approx(0.9 * best_val)
    full = cell(rep, "full")
    store = Store(store_dir)
    curves = [store.curve(r.run_id) for r in full.runs]
    assert full.aulc == mean_ci([aulc(*curve_xy(c, "macro_f1")) for c in curves])
    hits = [flops_to_fraction(c, s.target, "macro_f1") for c in curves]
    assert full.reached == 3 and full.flops_to_target == mean_ci(hits)
    assert cell(rep, "ia3").reached == 0 and cell(rep, "ia3").flops_to_target is None  # never gets there
    assert cell(rep, "base").aulc.mean == pytest.approx(cell(rep, "base").validation["macro_f1"].mean)


def test_lr_search_reports_scores_and_the_chosen_rate(rep) -> None:
    lora = next(s for s in rep.lr_searches if s.method == "lora")
    assert [p.lr for p in lora.points] == [1e-4, 5e-4, 2e-3] and all(len(p.seeds) == 2 for p in lora.points)
    assert lora.chosen_lr == 5e-4 and lora.chosen_by == "test run"  # the test-scored lora cell used 5e-4
    ia3 = next(s for s in rep.lr_searches if s.method == "ia3")
    assert ia3.chosen_lr == 1e-2 and ia3.chosen_by == "best validation"
    assert sum(r.lr_search for r in rep.runs) == 8


def test_ablation_over_one_method_param(rep) -> None:
    abl = [a for a in rep.sections[0].ablations if a.method == "lora"]
    assert [(a.param, a.values) for a in abl] == [("r", [4, 8, 16])]
    assert [c.label for c in abl[0].cells] == ["lora (r=4)", "lora (r=8)", "lora (r=16)"]


def test_missing_predictions_rank_by_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    refs, hard = [int(x) for x in rng.integers(0, 4, 80)], rng.random(80)
    store = Store(tmp_path)
    for seed in (0, 1):
        classification_run(store, "full", {}, 0.9, 3e11, 10, 1e9, 10, 4.0, seed, 1e-4, refs, hard, write_predictions=False)
        classification_run(store, "ia3", {}, 0.5, 3e11, 10, 1e9, 10, 4.0, seed, 1e-4, refs, hard)
    store.close()
    s = aggregate(tmp_path, resamples=50).sections[0]
    assert [c.label for c in s.cells] == ["full", "ia3"] and [c.rank for c in s.cells] == [1, 2]
    assert s.cells[1].vs_best is None and "missing" in s.bootstrap


def test_generation_sections_use_rouge(tmp_path: Path) -> None:
    store = Store(tmp_path)
    refs = [[f"person one asks about item {i} and person two answers"] for i in range(30)]
    outputs = {"lora": [r[0] for r in refs], "prompt": [f"item {i}" for i in range(30)]}
    for method, preds in outputs.items():
        for seed in (0, 1):
            cfg = config(method, {}, seed, 1e-3, kind="summarization", source="builtin:dialogsum")
            from peftbench.metrics import rouge

            result = {"test": rouge(preds, refs), "validation": {"rougeL": 0.3}, "metrics": ["rouge1", "rouge2", "rougeL", "rougeLsum"],
                      "select_metric": "rougeL", "lr": 1e-3, "costs": {"train_flops": 1e12, "params_trainable": 100},
                      "task": {"kind": "summarization"}, "samples": []}
            curve = [{"step": 8, "tokens": 1, "train_flops": 5e11, "seconds": 1, "train_loss": 2.0, "metrics": {"rougeL": 0.2}},
                     {"step": 16, "tokens": 2, "train_flops": 1e12, "seconds": 2, "train_loss": 1.0, "metrics": {"rougeL": 0.3}}]
            add_run(store, cfg, result, curve, {"predictions": preds, "references": refs})
    store.close()
    s = aggregate(tmp_path, resamples=200).sections[0]
    assert s.title == "summarization · builtin:dialogsum · default" and s.select_metric == "rougeL"
    assert s.best.label == "lora" and s.best.test["rougeL"].mean == pytest.approx(1.0)
    assert s.cells[1].vs_best.distinguishable and s.cells[1].rank == 2
    assert s.cells[0].aulc.mean == pytest.approx((0.5 * 0.2 + 0.5 * 0.25))  # flat to the first point, then linear


# -- outputs ---------------------------------------------------------------------------
def test_csv_json_markdown(rep) -> None:
    rows = list(csv.DictReader(io.StringIO(to_csv(rep))))
    assert len(rows) == 7
    full = next(r for r in rows if r["label"] == "full")
    c = cell(rep, "full")
    assert float(full["test_macro_f1_mean"]) == pytest.approx(c.test["macro_f1"].mean)
    assert float(full["test_macro_f1_ci"]) == pytest.approx(c.test["macro_f1"].half_width)
    assert full["n_seeds"] == "3" and full["seeds"] == "0 1 2" and float(full["cost_train_flops_mean"]) > 1e13
    ia3 = next(r for r in rows if r["label"] == "ia3")
    assert float(ia3["p_value"]) < 0.01 and float(ia3["delta_high"]) < 0
    assert next(r for r in rows if r["label"] == "base")["test_macro_f1_ci"] == ""  # one seed: no interval

    doc = json.loads(to_json(rep))
    jfull = next(x for x in doc["sections"][0]["cells"] if x["label"] == "full")
    assert jfull["test"]["macro_f1"]["mean"] == pytest.approx(c.test["macro_f1"].mean)
    assert jfull["test"]["macro_f1"]["low"] == pytest.approx(c.test["macro_f1"].low)
    assert len(jfull["runs"]) == 3 and isinstance(jfull["runs"][0], str)
    assert {s["chosen_lr"] for s in doc["lr_searches"]} == {5e-4, 1e-2}

    md = to_markdown(rep)
    assert "## classification · builtin:tweet_eval_emotion · default" in md and "≈ best" in md
    assert "| rank | method |" in md and "test macro-F1" in md and "Learning-rate search" in md
    line = next(x for x in md.splitlines() if x.startswith("| 1 |"))
    assert f"{c.test['macro_f1'].mean:.4f} ± {c.test['macro_f1'].half_width:.4f}" in line or "adapter" in line


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_pngs(rep) -> None:
    plots = section_plots(rep.sections[0])
    names = [p.name for p in plots]
    assert names[:4] == ["s1-validation-curves", "s1-validation-vs-seconds", "s1-validation-vs-step", "s1-training-loss"]
    assert {"s1-pareto-params-trainable", "s1-pareto-peak-memory-bytes", "s1-pareto-train-flops", "s1-pareto-latency-b1-ms"} <= set(names)
    assert any("ablation" in n and n.endswith("-r") for n in names)
    for p in plots:
        w, h = png_size(p.png)
        assert 400 < w < 2000 and 300 < h < 1500 and len(p.png) > 10_000, p.name


def test_pareto_front() -> None:
    # (cost, score): b dominates c; a is cheapest; d is best
    assert pareto_front([1, 5, 6, 10], [0.5, 0.7, 0.6, 0.9]) == [0, 1, 3]
    assert pareto_front([1, 2], [0.3, 0.2], lower_is_better=True) == [0, 1]
    assert pareto_front([1, 1, 2], [0.5, 0.6, 0.4]) == [1]


def test_html_is_self_contained(rep) -> None:
    html = render(rep)
    assert html.startswith("<!DOCTYPE html>") and html.count("<table") >= 3 and 'class="sortable"' in html
    assert html.count("data:image/png;base64,") == len(section_plots(rep.sections[0]))
    assert "http://" not in html and "https://" not in html and "src=\"//" not in html
    assert "tweet 0: &lt;b&gt;so&lt;/b&gt; happy &amp; sad" in html and "<b>so</b>" not in html  # escaped
    assert "Sample predictions" in html and "untuned" in html
    for r in rep.runs:
        assert r.run_id in html
    assert html.count("<details>") == len(rep.runs) and "&quot;target_modules&quot;" in html
    assert "≈ best" in html and "Learning-rate search" in html and "<script>" in html


# -- the command -----------------------------------------------------------------------
def test_report_command_writes_outputs(store_dir: Path, tmp_path: Path) -> None:
    console = Console(record=True, width=250)
    out = tmp_path / "out"
    rep = report(store_dir, html=out / "r.html", csv=out / "r.csv", json_path=out / "r.json", markdown=out / "r.md",
                 plots_dir=out / "plots", console=console, resamples=100)
    text = console.export_text()
    assert "classification · builtin:tweet_eval_emotion · default" in text and "≈ best" in text
    assert "learning-rate search" in text and "test macro-F1" in text and "wrote" in text
    assert "AULC" in text and "FLOPs to 90%" in text and "peak memory" in text and "22.7 M" in text
    for name in ("r.html", "r.csv", "r.json", "r.md"):
        assert (out / name).stat().st_size > 500
    pngs = sorted((out / "plots").glob("*.png"))
    assert len(pngs) == len(section_plots(rep.sections[0])) and all(png_size(p.read_bytes()) for p in pngs)


def test_report_refuses_empty_or_missing_results(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        report(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()  # reporting creates nothing
    with pytest.raises(UserError, match="no results"):
        report(tmp_path)
    store = Store(tmp_path / "res")
    store.begin("abc", config("lora", {}, 0, 1e-3), "lora", "default", "classification")
    store.close()
    with pytest.raises(UserError, match="no finished runs") as e:
        report(tmp_path / "res")
    assert "\n" not in str(e.value)


def test_a_plain_method_among_its_variants_is_named_plainly() -> None:
    """Settings a variant turns on are named on the variant; the plain method's unset ones (None, False)
    are not, while differences outside the method (here the budget) stay named on every cell."""
    from types import SimpleNamespace

    from peftbench.report.aggregate import _labels

    def c(params: dict, flops: float = 1e12):
        return SimpleNamespace(method="lora", label="", config={"method": {"name": "lora", "params": params},
                                                                "train": {"flops": flops, "seed": 0}})

    cells = [c({"init": None, "use_dora": False}), c({"init": None, "use_dora": True}), c({"init": "pissa", "use_dora": False})]
    _labels(cells)
    assert [x.label for x in cells] == ["lora", "lora (use_dora=True)", "lora (init=pissa)"]
    cells = [c({"use_dora": False}, 1e12), c({"use_dora": False}, 4e12), c({"use_dora": True}, 4e12)]
    _labels(cells)
    assert [x.label for x in cells] == ["lora (flops=1e+12)", "lora (flops=4e+12)", "lora (use_dora=True, flops=4e+12)"]
