"""The sweep files in examples/ expand into the runs their comments promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftbench.sweep import expand

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_lora_ablation_crosses_ranks_targets_and_seeds():
    sweep = expand(EXAMPLES / "lora_ablation.yaml")
    assert len(sweep.runs) == 5 * 2 * 2
    cells = {(r.config.method.params["r"], str(r.config.method.params["target_modules"])) for r in sweep.runs}
    assert len(cells) == 10
    assert {r.config.train.steps for r in sweep.runs} == {64}


def test_peft_by_time_gives_each_task_one_flops_budget():
    sweep = expand(EXAMPLES / "peft_by_time.yaml")
    assert len(sweep.runs) == 2 * 5 * 2
    budgets = {}
    for r in sweep.runs:
        budgets.setdefault(r.config.task.kind, set()).add(r.config.train.flops)
    assert budgets == {"classification": {2.634e12}, "multiple_choice": {5.606e12}}
    assert all(r.config.train.steps is None for r in sweep.runs)


@pytest.mark.parametrize("name, runs", [("dialogsum_untuned_ia3_lora.yaml", 3)])
def test_dialogsum_example(name, runs):
    sweep = expand(EXAMPLES / name)
    assert len(sweep.runs) == runs
    assert [r.config.method.name for r in sweep.runs] == ["base", "ia3", "lora"]
    assert all(r.config.model.name == "smollm2" and r.config.task.kind == "summarization" for r in sweep.runs)
