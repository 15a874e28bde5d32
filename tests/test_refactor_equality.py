"""Issue 11 item 8: a refactor changes no stored number.

Two small studies on the tiny BERT of conftest.py must store exactly what the code stored when
the fixture was written: test and validation metrics, every validation-curve point (training
seconds aside), FLOPs, tokens, steps and the selected step. Integers must be equal and floats
equal to the last digit (JSON keeps a float's repr, so `==` on the loaded values is exact).

- a FLOPs-budget compare (base, head, lora, ia3; lora's 8 steps set the budget; 4 quarter points);
- a steps-budget compare with gradient accumulation and eval_every (lora, adalora's per-step hook).

Floats depend on the torch build, so the fixture records torch's version and the test skips on
another one. They also depend on the CPU: MKL takes other kernels on other CPUs, and the same code
stored losses 1.5e-7 apart on a Xeon with AMX and on the CPU the fixture was written on. So the
fixture keeps `original` (written 2026-12-01 from the unrefactored code, CPU not recorded) and
`by_cpu` entries: on a CPU with an entry every float must equal it to the last digit; on another,
the numbers must equal some entry exactly or the original within FLOAT_RTOL (integers, metrics'
keys, curve lengths always exactly). Add this CPU's entry only from code known to be right (e.g.
the commit before a refactor); writing first checks it against the original within FLOAT_RTOL:

    PEFTBENCH_WRITE_FIXTURE=1 python -m pytest tests/test_refactor_equality.py
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.store import Store
from peftbench.train.matmul import cpuinfo

FIXTURE = Path(__file__).parent / "fixtures" / "refactor_equality.json"
WRITE = os.environ.get("PEFTBENCH_WRITE_FIXTURE") == "1"
FLOAT_RTOL = 1e-6  # CPUs seen differ by 1.5e-7; a refactor's mistake moves losses far more
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


def cpu_key() -> str:
    """The CPU as MKL's kernel choice sees it: vendor, family, model, name and its widest vector units."""
    flags = set(cpuinfo("flags").split())
    units = "+".join(f for f in ("avx2", "avx512f", "amx_tile") if f in flags)
    return " | ".join((cpuinfo("vendor_id") or "?", f"family {cpuinfo('cpu family') or '?'} model {cpuinfo('model') or '?'}",
                       cpuinfo("model name") or "?", units))


def mismatch(got: Any, want: Any, rtol: float, where: str = "") -> str | None:
    """Where `got` differs from `want` (None if nowhere): floats within `rtol`, everything else exactly."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return f"{where}: keys {sorted(set(got) ^ set(want))}"
        return next((m for k in want if (m := mismatch(got[k], want[k], rtol, f"{where}/{k}"))), None)
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return f"{where}: {len(got)} items, the fixture {len(want)}"
        return next((m for i, (g, w) in enumerate(zip(got, want)) if (m := mismatch(g, w, rtol, f"{where}[{i}]"))), None)
    if isinstance(want, float) and isinstance(got, float) and rtol:
        return None if math.isclose(got, want, rel_tol=rtol) else f"{where}: {got!r}, the fixture {want!r}"
    return None if type(got) is type(want) and got == want else f"{where}: {got!r}, the fixture {want!r}"


def test_cpu_tolerance_is_for_floats_only():
    want = {"runs": [{"loss": 1.0863763491312664, "steps": 26, "curve": [1, 2]}]}
    assert mismatch({"runs": [{"loss": 1.0863761901855469, "steps": 26, "curve": [1, 2]}]}, want, FLOAT_RTOL) is None
    assert "loss" in mismatch({"runs": [{"loss": 1.0863761901855469, "steps": 26, "curve": [1, 2]}]}, want, 0.0)
    assert "loss" in mismatch({"runs": [{"loss": 1.0873, "steps": 26, "curve": [1, 2]}]}, want, FLOAT_RTOL)
    assert "steps" in mismatch({"runs": [{"loss": 1.0863763491312664, "steps": 27, "curve": [1, 2]}]}, want, FLOAT_RTOL)
    assert "items" in mismatch({"runs": [{"loss": 1.0863763491312664, "steps": 26, "curve": [1]}]}, want, FLOAT_RTOL)
    assert "keys" in mismatch({"runs": [{"loss": 1.0863763491312664, "steps": 26}]}, want, FLOAT_RTOL)
    assert cpu_key() and cpu_key() == cpu_key()


def test_stored_numbers_match_the_fixture(tiny_model, tiny_data, tmp_path):
    want = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else None
    if want is None:
        pytest.fail(f"{FIXTURE} is missing; write it with PEFTBENCH_WRITE_FIXTURE=1 from known-good code")
    if want["torch"] != torch.__version__:
        pytest.skip(f"fixture written with torch {want['torch']}, this is {torch.__version__}")
    got = {name: study(tiny_model, tiny_data, tmp_path / name, extra) for name, extra in STUDIES.items()}
    cpu = cpu_key()
    if WRITE:
        assert (m := mismatch(got, want["original"], FLOAT_RTOL)) is None, f"not written: differs from the original at {m}"
        want["by_cpu"][cpu] = got
        FIXTURE.write_text(json.dumps(want, indent=1, sort_keys=True) + "\n")
        return
    if cpu in want["by_cpu"]:
        assert (m := mismatch(got, want["by_cpu"][cpu], 0.0)) is None, f"{cpu}: {m}"
    elif not any(mismatch(got, entry, 0.0) is None for entry in [want["original"], *want["by_cpu"].values()]):
        assert (m := mismatch(got, want["original"], FLOAT_RTOL)) is None, f"{cpu} (no entry of its own): {m}"
