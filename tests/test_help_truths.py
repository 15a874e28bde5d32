"""Issue 15 item 5: the help of the budget flags says what they do, and a test holds it to it."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from peftbench.cli import app
from conftest import write_jsonl, make_rows


def helptext(*cmd: str) -> str:
    res = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "400"})
    return " ".join(res.output.split())


def compare(tiny_model, tiny_data, tmp_path, *extra: str) -> list[dict]:
    res = CliRunner().invoke(app, ["compare", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32",
                                   "--batch-size", "8", "--methods", "head,lora", "--results-dir", str(tmp_path), "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["runs"]


def test_compare_steps_sets_the_reference_flops_as_the_help_says(tiny_model, tiny_data, tmp_path):
    assert "the reference method (--reference, default lora) trains this many and every method gets the training FLOPs it spent" in helptext("compare")
    runs = {r["method"]: r for r in compare(tiny_model, tiny_data, tmp_path / "a", "--steps", "6")}
    from peftbench.store import Store

    steps = {m: Store(tmp_path / "a").get(r["run_id"]).result["costs"]["steps"] for m, r in runs.items()}
    assert steps["lora"] == 6 and steps["head"] != 6  # not "the same for every method"
    budget = Store(tmp_path / "a").get(runs["lora"]["run_id"]).config["train"]["flops"]
    assert all(r["train_flops"] >= budget for r in runs.values())
    assert "--budget steps gives every method these steps instead" in helptext("compare")
    same = compare(tiny_model, tiny_data, tmp_path / "b", "--steps", "3", "--budget", "steps")
    assert {Store(tmp_path / "b").get(r["run_id"]).result["costs"]["steps"] for r in same} == {3}


def test_run_trains_one_epoch_without_a_budget_as_the_help_says(tiny_model, tiny_data, tmp_path):
    assert "run: 1 when no other budget is given" in helptext("run")
    res = CliRunner().invoke(app, ["run", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32",
                                   "--batch-size", "16", "--results-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["result"]["costs"]["steps"] == math.ceil(96 / 16)  # tiny_data's 96 training rows


def test_errors_name_the_flag(tiny_model, tmp_path):
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "train.jsonl", make_rows(20, 1))
    res = CliRunner().invoke(app, ["run", "--model", tiny_model, "--data", str(tmp_path / "d"), "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--test-fraction" in res.output
