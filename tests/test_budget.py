"""Budgets: steps, measured FLOPs and seconds stop training within one step; the schedule follows progress."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from peftbench.config import TrainSpec, parse_config
from peftbench.errors import UserError
from peftbench.runner import calibrate_flops, run
from peftbench.train import optim
from peftbench.train.budget import Budget


def config(tiny_config: dict, **train) -> dict:
    cfg = json.loads(json.dumps(tiny_config))
    cfg["train"] = {**{k: v for k, v in cfg["train"].items() if k != "steps"}, "eval_every": None, **train}
    return cfg


def test_flops_budget_stops_at_the_first_step_that_reaches_it(tiny_config, tmp_path):
    five = run(parse_config(config(tiny_config, steps=5)), tmp_path).row.result["costs"]
    six = run(parse_config(config(tiny_config, steps=6)), tmp_path).row.result["costs"]
    assert five["train_flops"] < six["train_flops"]
    budget = (five["train_flops"] + six["train_flops"]) / 2  # reached during the 6th step
    got = run(parse_config(config(tiny_config, flops=budget)), tmp_path).row.result
    assert got["costs"]["steps"] == 6
    assert got["costs"]["train_flops"] == six["train_flops"]  # same batches, same measured FLOPs
    assert got["costs"]["train_flops"] - budget < six["train_flops"] - five["train_flops"]  # less than one step over
    assert got["budget"] == {"kind": "flops", "value": budget}


def test_flops_budget_on_a_step_boundary_takes_exactly_those_steps(tiny_config, tmp_path):
    six = run(parse_config(config(tiny_config, steps=6)), tmp_path).row.result["costs"]["train_flops"]
    got = run(parse_config(config(tiny_config, flops=float(six))), tmp_path).row.result["costs"]
    assert (got["steps"], got["train_flops"]) == (6, six)


def test_calibration_counts_the_same_flops_as_training(tiny_config, tmp_path):
    trained = run(parse_config(config(tiny_config, steps=7)), tmp_path).row.result["costs"]["train_flops"]
    assert calibrate_flops(parse_config(config(tiny_config, steps=7)), 7) == trained


def test_flops_budget_validates_four_times_at_quarters(tiny_config, tmp_path):
    ten = run(parse_config(config(tiny_config, steps=12)), tmp_path).row.result["costs"]["train_flops"]
    row = run(parse_config(config(tiny_config, flops=float(ten))), tmp_path).row
    from peftbench.store import Store

    curve = Store(tmp_path).curve(row.run_id)
    assert len(curve) == 4
    fractions = [p["train_flops"] / ten for p in curve]
    for quarter, f in zip((0.25, 0.5, 0.75, 1.0), fractions):
        assert quarter <= f < quarter + 0.2  # the first step at or past each quarter
    assert curve[-1]["step"] == 12


def test_seconds_budget_stops_just_past_it(tiny_config, tmp_path):
    got = run(parse_config(config(tiny_config, seconds=1.5)), tmp_path).row.result["costs"]
    assert got["train_seconds"] >= 1.5
    assert got["steps"] >= 2
    per_step = got["train_seconds"] / got["steps"]
    assert got["train_seconds"] - 1.5 < 3 * per_step + 0.25  # stopped within about a step


def test_progress_schedule_matches_the_step_schedule():
    """A FLOPs budget's schedule has the shape a step budget gets from transformers."""
    total, warmup_ratio = 50, 0.1
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.SGD([p1], lr=1.0)
    ref = get_linear_schedule_with_warmup(ref_opt, int(warmup_ratio * total), total)
    prog_opt = torch.optim.SGD([p2], lr=1.0)
    progress = 0.0
    prog = optim.ProgressSchedule(prog_opt, warmup_ratio, cosine=False, progress=lambda: progress)
    for step in range(1, total + 1):
        ref_opt.step(), prog_opt.step()
        ref.step()
        progress = step / total
        prog.step()
        assert prog.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], abs=1e-9)
    cos = optim.ProgressSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 0.0, cosine=True,
                                 progress=lambda: 0.0)
    assert cos.factor(0.5) == pytest.approx(0.5)
    assert cos.factor(1.0) == pytest.approx(0.0, abs=1e-12)
    assert cos.factor(0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_budget_progress_by_kind():
    assert Budget("steps", 10).progress(5, 123, 9.0) == 0.5
    assert Budget("flops", 200).progress(1, 50, 9.0) == 0.25
    assert Budget("seconds", 4.0).progress(1, 50, 3.0) == 0.75
    assert Budget.of(TrainSpec(epochs=2, batch_size=10), 95).steps == 20
    assert Budget.of(TrainSpec(flops=1e9), 95).steps is None


@pytest.mark.parametrize("train, words", [
    ({"flops": 1e9, "seconds": 3}, "not both"),
    ({"flops": 1e9, "steps": 3}, "replaces train.steps"),
    ({"flops": -1}, "greater than 0"),
])
def test_bad_budgets_are_refused_in_one_line(tiny_config, train, words):
    cfg = json.loads(json.dumps(tiny_config))
    cfg["train"] = {k: v for k, v in cfg["train"].items() if k != "steps"} | train
    with pytest.raises(UserError, match=words) as err:
        parse_config(cfg)
    assert "\n" not in str(err.value)


def test_adalora_refuses_a_flops_budget(tiny_config, tmp_path):
    cfg = config(tiny_config, flops=1e9)
    cfg["method"] = {"name": "adalora"}
    with pytest.raises(UserError, match="adalora.*steps"):
        run(parse_config(cfg), tmp_path)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_validation_only_run_never_scores_test(tiny_config, tmp_path):
    row = run(parse_config(config(tiny_config, steps=3, test=False)), tmp_path).row
    assert row.done and row.result["test"] is None and row.result["samples"] == []
    assert row.result["validation"]["macro_f1"] >= 0
    assert not (row.folder / "predictions.json").exists()
