"""Hostile or unlucky input (issue 12, first items): files cannot allow remote code, run ids are literal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from peftbench.config import _asks_remote_code, load_yaml
from peftbench.errors import UserError
from peftbench.store import Store
from conftest import wait_until_running
from test_bad_input import assert_nothing_stored, assert_refused, invoke

KEYS = st.sampled_from(["model", "task", "name", "params", "base", "axes", "trust", "remote_code", "x"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=4))
TREES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
                     max_leaves=12)


@pytest.mark.parametrize("value", [True, "yes", 1])
def test_a_run_config_file_cannot_turn_on_remote_code(value: Any, tiny_config: dict, tmp_path: Path) -> None:
    cfg = {**tiny_config, "model": {**tiny_config["model"], "trust_remote_code": value}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = tmp_path / "res"
    line = assert_refused(invoke("run", "--config", tmp_path / "run.yaml", "--results-dir", res),
                          "trust_remote_code", "--trust-remote-code", results_dir=res)
    assert "run.yaml" in line
    assert_nothing_stored(res)


def test_a_sweep_file_cannot_turn_on_remote_code_anywhere(tiny_config: dict, tmp_path: Path) -> None:
    sweep = {"base": tiny_config, "axes": {"model": [{"name": tiny_config["model"]["name"], "trust_remote_code": True}]}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    res = tmp_path / "res"
    assert_refused(invoke("sweep", tmp_path / "sweep.yaml", "--results-dir", res), "trust_remote_code", results_dir=res)
    assert_nothing_stored(res)


def test_false_or_absent_is_fine(tiny_config: dict, tmp_path: Path) -> None:
    cfg = {**tiny_config, "model": {**tiny_config["model"], "trust_remote_code": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert load_yaml(tmp_path / "run.yaml")["model"]["trust_remote_code"] is False


@settings(max_examples=200, deadline=None, database=None)
@given(tree=TREES, path=st.lists(st.sampled_from(["model", "base", 0]), max_size=3))
def test_the_key_is_found_at_any_depth_and_only_when_truthy(tree: Any, path: list[Any]) -> None:
    assert not _asks_remote_code(tree)  # the strategy never writes the key
    planted: Any = {"trust_remote_code": True}
    for step in reversed(path):
        planted = [planted] if step == 0 else {step: planted}
    assert _asks_remote_code([tree, planted])
    assert _asks_remote_code({"x": tree, "y": planted})
    assert not _asks_remote_code({"x": tree, "model": {"trust_remote_code": False}})


def test_run_ids_are_literal_prefixes_not_wildcards(tiny_config: dict, tmp_path: Path) -> None:
    from peftbench.runner import run

    res = tmp_path / "res"
    from peftbench.config import parse_config

    run(parse_config(tiny_config), res)
    with Store(res) as store:
        (row,) = store.list("done")
        assert store.get(row.run_id[:6]).run_id == row.run_id  # a real prefix still works
        for ident in ("%", "_", row.run_id[:3] + "_", row.run_id.replace("-", "_"), row.run_id[:4] + "%"):
            with pytest.raises(UserError, match="no stored run matches"):
                store.get(ident)
        for ident in ("", "   "):
            with pytest.raises(UserError, match="no run id given"):
                store.get(ident)
    assert_refused(invoke("results", "show", "%", "--results-dir", res), "no stored run matches")


@pytest.mark.parametrize("flags", [("--lr", "inf"), ("--lr", "nan"), ("--flops", "inf"), ("--epochs", "inf"),
                                   ("--seconds", "nan"), ("--seed", "99999999999999999999"), ("--seed", "-1")])
def test_budgets_rates_and_seeds_must_be_finite_and_in_range(flags: tuple[str, str], tiny_config: dict, tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({k: v for k, v in tiny_config.items() if k != "train"}))
    res = tmp_path / "res"
    key = "train." + flags[0].removeprefix("--")
    assert_refused(invoke("run", "--config", tmp_path / "run.yaml", *flags, "--results-dir", res), key, results_dir=res)
    assert_nothing_stored(res)


@pytest.mark.parametrize("grid", ["nan", "1e-3,inf", "-1e-3"])
def test_a_learning_rate_grid_with_no_finite_positive_rate_is_refused_before_any_work(grid: str, tmp_path: Path) -> None:
    res = tmp_path / "res"
    assert_refused(invoke("compare", "--lr-grid", grid, "--results-dir", res), "--lr-grid", results_dir=res)
    assert_nothing_stored(res)


def test_a_diverging_run_stops_at_once_and_is_stored_as_failed(tiny_config: dict, tmp_path: Path) -> None:
    cfg = {**tiny_config, "train": {**tiny_config["train"], "steps": 50, "eval_every": 50, "max_grad_norm": None}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = tmp_path / "res"
    result = invoke("run", "--config", tmp_path / "run.yaml", "--lr", "1e9", "--results-dir", res)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line = result.stderr.strip().splitlines()[-1]  # after the run's own progress lines
    assert line.startswith("error: loss became nan at step ") and "(learning rate 1e+09): lower the learning rate" in line
    step = int(line.split(" at step ")[1].split()[0])
    assert step < 50  # stopped where it diverged, not at the end of the budget
    with Store(res) as store:
        (row,) = store.list()
        assert row.status == "failed" and "loss became" in (row.error or "")
        assert not store.list("done")


def test_ctrl_c_names_the_interrupted_run_and_how_to_resume(tiny_config: dict, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    long = {**tiny_config, "train": {**tiny_config["train"], "steps": 5000, "eval_every": 5000}}
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(long))
    res = tmp_path / "res"
    proc = subprocess.Popen(
        [sys.executable, "-m", "peftbench.cli", "run", "--config", str(tmp_path / "long.yaml"), "--results-dir", str(res)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        wait_until_running(res)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    with Store(res) as store:
        (row,) = store.list()
    assert row.status == "interrupted"
    assert f"interrupted: run {row.run_id} marked interrupted; rerun the same command to resume" in stderr
    assert "Traceback" not in stderr


def test_sweep_allows_remote_code_only_from_its_command_line(tiny_config: dict, tmp_path: Path) -> None:
    from peftbench.sweep.spec import expand

    sweep = {"base": tiny_config, "seeds": [0, 1]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert not any(r.config.model.trust_remote_code for r in expand(tmp_path / "sweep.yaml").runs)
    allowed = expand(tmp_path / "sweep.yaml", trust_remote_code=True).runs
    assert len(allowed) == 2 and all(r.config.model.trust_remote_code for r in allowed)
    res = tmp_path / "res"
    done = invoke("sweep", tmp_path / "sweep.yaml", "--results-dir", res, "--trust-remote-code")
    assert done.exit_code == 0, done.output
    with Store(res) as store:
        assert [r.config["model"]["trust_remote_code"] for r in store.list("done")] == [True, True]
