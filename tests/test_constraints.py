"""The verdict under constraints (issue 16 item 2), through `peftbench report` and `compare` on small stores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.report.aggregate import aggregate
from peftbench.report.constraints import parse_limits, verdict
from peftbench.store import Store
from test_report import classification_run

# label: (acc, FLOPs per step, trainable, peak memory, adapter bytes, latency ms); "copy" predicts as lora does
CELLS = {
    "full": (0.86, 3.1e11, 22_700_000, 1.3e9, 90_000_000, 4.1),
    "lora": (0.84, 2.1e11, 147_000, 6.1e8, 600_000, 4.6),
    "adapter": (0.84, 2.2e11, 300_000, 6.5e8, 1_200_000, 5.0),
    "ia3": (0.55, 2.0e11, 10_000, 5.8e8, 41_000, 4.3),
    "base": (0.30, 0.0, 0, 4.0e8, 0, 4.0),
}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits") / "res"
    rng = np.random.default_rng(0)
    refs = [int(x) for x in rng.integers(0, 4, 300)]
    hard = rng.random(300)
    store = Store(root)
    lora_preds: dict[int, list[int]] = {}
    for label, (acc, fs, tp, mem, ad, lat) in CELLS.items():
        for seed in (0, 1, 2) if label != "base" else (0,):
            preds = lora_preds.get(seed) if label == "adapter" else None  # the same predictions: a sure tie
            classification_run(store, label, {}, acc, fs, tp, mem, ad, lat, seed, 1e-3, refs, hard, preds=preds)
            if label == "lora":
                lora_preds[seed] = json.loads((store.list()[-1].folder / "predictions.json").read_text())["predictions"]
    store.close()
    return root


def report(store_dir: Path, *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, ["report", "--results-dir", str(store_dir), "--resamples", "200", *args])
    return res.exit_code, res.stdout, res.stderr


def verdict_line(stdout: str) -> str:
    lines = [x for x in stdout.splitlines() if x.startswith("best within ")]
    assert len(lines) == 1, stdout
    return lines[0]


def score(store_dir: Path, label: str) -> str:
    c = next(c for c in aggregate(store_dir, resamples=100).sections[0].cells if c.label == label)
    iv = c.test["macro_f1"]
    return f"{iv.mean:.3f} ± {iv.half_width:.3f}"


def test_memory_excludes_the_overall_best_and_the_tie_set_is_bootstrapped_against_the_feasible_best(store_dir: Path) -> None:
    code, out, _ = report(store_dir, "--max-memory", "1GB")
    assert code == 0
    line = verdict_line(out)
    assert line == (f"best within 1 GB peak memory: lora {score(store_dir, 'lora')} (test macro-F1), indistinguishable "
                    "from adapter; the overall best, full, is excluded by its 1.3 GB peak memory")
    assert out.index("test quality") < out.index(line)  # under the tables


def test_two_limits_name_every_constraint_and_what_excluded_the_best(store_dir: Path) -> None:
    code, out, _ = report(store_dir, "--max-memory", "2GB", "--max-adapter-bytes", "1MB")
    assert code == 0
    assert verdict_line(out) == (f"best within 2 GB peak memory and 1 MB adapter: lora {score(store_dir, 'lora')} "
                                 "(test macro-F1); the overall best, full, is excluded by its 90 MB adapter")


@pytest.mark.parametrize("args, best, overall", [
    (["--max-trainable", "50k"], "ia3", "the overall best, full, is excluded by its 22.7M trainable params"),
    (["--max-flops", "1.3e13"], "ia3", "the overall best, full, is excluded by its 1.98e+13 training FLOPs"),
    (["--max-latency-ms", "4.45"], "full", "it is also the overall best"),
    (["--max-memory", "1.5GiB", "--max-trainable", "1M"], "lora", "excluded by its 22.7M trainable params"),
])
def test_each_constraint_picks_the_best_feasible_method(store_dir: Path, args: list[str], best: str, overall: str) -> None:
    code, out, _ = report(store_dir, *args)
    assert code == 0, out
    line = verdict_line(out)
    assert re.match(rf"best within .*: {best} \d\.\d{{3}} ± \d\.\d{{3}} \(test macro-F1\)", line), line
    assert line.endswith(overall), line


def test_no_method_fits_is_one_line_and_exit_2_after_the_tables(store_dir: Path, tmp_path: Path) -> None:
    code, out, err = report(store_dir, "--max-memory", "100MB", "--max-trainable", "1M", "--html", str(tmp_path / "r.html"))
    assert code == 2
    assert "test quality" in out and "best within" not in out  # the tables, then the refusal
    lines = err.strip().splitlines()
    assert lines == ["error: no method fits within 100 MB peak memory and 1M trainable params; the tightest is "
                     "--max-memory 100MB (5 of 5 methods exceed it); the closest, base, needs 400 MB peak memory"]
    html = (tmp_path / "r.html").read_text()
    assert html.index("no method fits within 100 MB") < html.index("<table")  # the HTML still says it, on top


def test_html_shows_the_verdict_above_the_tables(store_dir: Path, tmp_path: Path) -> None:
    code, out, _ = report(store_dir, "--max-memory", "1GB", "--html", str(tmp_path / "r.html"))
    assert code == 0
    html = (tmp_path / "r.html").read_text()
    assert html.index('<p class=verdict>best within 1 GB peak memory: lora') < html.index("<table")


def test_an_unmeasured_cost_cannot_be_shown_to_fit(store_dir: Path) -> None:
    section = aggregate(store_dir, resamples=100).sections[0]
    for c in section.cells:
        if c.label == "ia3":
            del c.costs["latency.b1_ms"]
    v = verdict(section, parse_limits({"max_latency_ms": "4.45", "max_trainable": "50k"}))
    assert v.best == "base" and v.excluded["ia3"] == ["its latency at batch 1 (not measured)"]


def test_bad_limit_is_one_line_exit_2(store_dir: Path) -> None:
    code, out, err = report(store_dir, "--max-memory", "lots")
    assert code == 2 and out == ""
    assert err.strip() == "error: --max-memory 'lots' is not a positive size in bytes; write it like --max-memory 2GB " \
                          "(units: b, kb, mb, gb, tb, kib, mib, gib, tib)"


def test_compare_prints_the_verdict_and_refuses_when_nothing_fits(tiny_model: str, tiny_data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from peftbench.report import flags

    monkeypatch.setattr(flags, "DEGENERATE_SHARE", 1.01)  # a tiny model predicts one class: here the limits are tested
    args = ["compare", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--batch-size", "8",
            "--eval-batch-size", "16", "--methods", "base,lora", "--steps", "2", "--results-dir", str(tmp_path)]
    res = CliRunner().invoke(app, [*args, "--max-memory", "1kB"])
    assert res.exit_code == 2
    assert "test quality" in res.stdout and "best within" not in res.stdout  # tables first
    assert res.stderr.strip().splitlines()[-1].startswith("error: no method fits within 1 kB peak memory; the tightest is "
                                                          "--max-memory 1kB (2 of 2 methods exceed it); the closest, base, needs ")
    res = CliRunner().invoke(app, [*args, "--max-trainable", "1"])  # the same runs, reused
    assert res.exit_code == 0, res.output
    line = verdict_line(res.stdout)
    assert line.startswith("best within 1 trainable params: base ") and "1 seed, no CI" in line  # only base trains nothing
    best = aggregate(tmp_path).sections[0].best.label
    overall = "; it is also the overall best" if best == "base" else "; the overall best, lora, is excluded by its "
    assert overall in line
    res = CliRunner().invoke(app, [*args, "--max-trainable", "1", "--json"])
    (v,) = json.loads(res.stdout)["verdicts"]
    assert v["fits"] and v["best"] == "base" and v["line"] == line


def test_a_degenerate_method_is_never_the_verdict(tiny_model: str, tiny_data: Path, tmp_path: Path) -> None:
    """The tiny model predicts one class whatever it is tuned with: both methods are degenerate, so none is named."""
    res = CliRunner().invoke(app, ["compare", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32",
                                   "--batch-size", "8", "--eval-batch-size", "16", "--methods", "base,lora", "--steps", "2",
                                   "--results-dir", str(tmp_path), "--max-trainable", "1G"])
    assert res.exit_code == 2, res.output
    assert "degenerate" in res.stdout
    assert res.stderr.strip().splitlines()[-1] == ("error: no method fits within 1B trainable params: no method has a "
                                                   "test score that is not degenerate (see the flag lines)")
