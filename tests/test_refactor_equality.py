"""Issue 11 item 8: a refactor changes no stored number.

Two small studies on the tiny BERT of conftest.py must store exactly what the code stored when
the fixture was written: test and validation metrics, every validation-curve point (training
seconds aside), FLOPs, tokens, steps and the selected step. Integers must be equal and floats
equal to the last digit (JSON keeps a float's repr, so `==` on the loaded values is exact).

- a FLOPs-budget compare (base, head, lora, ia3; lora's 8 steps set the budget; 4 quarter points);
- a steps-budget compare with gradient accumulation and eval_every (lora, adalora's per-step hook).

Floats depend on the torch build, so the fixture records torch's version and the test skips on
another one. Regenerate it only from code known to be right (e.g. the commit before a refactor):

    PEFTBENCH_WRITE_FIXTURE=1 python -m pytest tests/test_refactor_equality.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.store import Store

FIXTURE = Path(__file__).parent / "fixtures" / "refactor_equality.json"
WRITE = os.environ.get("PEFTBENCH_WRITE_FIXTURE") == "1"
COST_KEYS = ("train_flops", "train_forward_flops", "train_backward_flops", "flop_shapes_counted",
             "eval_flops", "steps", "tokens")

STUDIES = {
    "flops_budget": ["--methods", "base,head,lora,ia3", "--steps", "8"],
    "steps_budget": ["--methods", "lora,adalora", "--budget", "steps", "--steps", "6", "--grad-accum", "2",
                     "--eval-every", "4"],
}


def stored(results: Path, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """What the store holds for each run of a compare, minus wall-clock times."""
    store = Store(results)
    runs = []
    for r in doc["runs"]:
        row = store.get(r["run_id"])
        res = row.result
        curve = [{k: v for k, v in p.items() if k != "seconds"} for p in store.curve(r["run_id"])]
        runs.append({"method": row.method, "test": res["test"], "validation": res["validation"],
                     "best_step": res["best_step"], "costs": {k: res["costs"][k] for k in COST_KEYS},
                     "curve": curve})
    return runs


def study(tiny_model: str, tiny_data: Path, results: Path, extra: list[str]) -> dict[str, Any]:
    args = ["compare", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--batch-size", "8",
            "--eval-batch-size", "16", "--results-dir", str(results), *extra, "--json",
            "--matmul", "torch"]  # the fixture's numbers came from torch's own matmuls (test_matmul.py checks oneDNN's)
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    return {"budget": doc["budget"]["value"], "runs": stored(results, doc)}


def test_stored_numbers_match_the_fixture(tiny_model, tiny_data, tmp_path):
    if not WRITE:
        if not FIXTURE.exists():
            pytest.fail(f"{FIXTURE} is missing; write it with PEFTBENCH_WRITE_FIXTURE=1 from known-good code")
        want = json.loads(FIXTURE.read_text())
        if want["torch"] != torch.__version__:
            pytest.skip(f"fixture written with torch {want['torch']}, this is {torch.__version__}")
    got = {"torch": torch.__version__,
           **{name: study(tiny_model, tiny_data, tmp_path / name, extra) for name, extra in STUDIES.items()}}
    if WRITE:
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return
    for name in STUDIES:
        assert got[name]["budget"] == want[name]["budget"], name
        for g, w in zip(got[name]["runs"], want[name]["runs"], strict=True):
            assert g == w, (name, g["method"])
