"""Issue 15: a study is checked whole before anything trains; a failure midway still prints the finished
methods' table with the failures under it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.store import Store
from test_multiple_choice import data_dir


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def mc_args(model: str, tmp_path: Path) -> list[str]:
    return ["--model", model, "--task", "multiple_choice", "--data", str(data_dir(tmp_path / "mc")),
            "--max-length", "32", "--batch-size", "4", "--eval-batch-size", "8", "--steps", "2",
            "--results-dir", str(tmp_path / "r")]


def test_unfit_methods_picked_by_the_user_are_refused_together_before_any_run(tiny_model, tmp_path):
    res = invoke("compare", *mc_args(tiny_model, tmp_path), "--methods", "lora,prompt,prefix,ia3")
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if not line.startswith("Loading")]
    assert lines[-1].startswith("error: 2 of 4 methods cannot run") and "drop them from --methods" in lines[-1]
    assert [line.split(":")[0] for line in lines if "it cannot run here" in line] == ["prompt", "prefix"]
    assert "Traceback" not in res.output
    assert not (tmp_path / "r" / "runs").exists() or not Store(tmp_path / "r").list()  # nothing trained


def test_unfit_default_methods_are_dropped_with_one_line_each(tiny_model, tmp_path):
    res = CliRunner().invoke(app, ["compare", *mc_args(tiny_model, tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    dropped = [line for line in res.stderr.splitlines() if "dropped, it cannot run here" in line]
    assert [line.split(":")[0] for line in dropped] == ["prompt"]
    methods = [r["method"] for r in json.loads(res.stdout)["runs"]]
    assert methods == ["base", "head", "full", "lora", "ia3"]


def test_a_failure_midway_keeps_the_table_and_lists_the_failure(tiny_model, tiny_data, tmp_path, monkeypatch):
    from peftbench.methods.ia3 import IA3

    def broken(self, model, ctx):
        raise RuntimeError("disk on fire")

    real_check = __import__("peftbench.runner", fromlist=["check"]).check
    monkeypatch.setattr("peftbench.runner.check", lambda cfg: None if cfg.method.name == "ia3" else real_check(cfg))
    monkeypatch.setattr(IA3, "apply", broken)
    res = invoke("compare", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--batch-size", "8",
                 "--steps", "2", "--methods", "lora,ia3,head", "--results-dir", str(tmp_path / "r"))
    assert res.exit_code == 1, res.output  # a bug, not bad input: the crash path
    assert "ia3 (seed 0) failed: disk on fire; the study goes on" in res.output
    out = res.output
    assert out.index("failed: ia3 (seed 0): disk on fire") > out.index("head")  # under the table
    done = {r.method for r in Store(tmp_path / "r").list("done")}
    assert done == {"lora", "head"}


def test_a_sweep_is_checked_whole_before_any_run(tiny_model, tmp_path):
    import yaml

    sweep = {"name": "mc", "base": {"model": {"name": tiny_model},
                                    "task": {"kind": "multiple_choice", "data": {"source": str(data_dir(tmp_path / "mc"))},
                                             "max_length": 32},
                                    "train": {"steps": 2, "batch_size": 4}},
             "axes": {"method": ["lora", "prompt"], "train.seed": [0, 1]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    res = invoke("sweep", str(path), "--results-dir", str(tmp_path / "r"))
    assert res.exit_code == 2, res.output
    assert [line.split(":")[0] for line in res.output.splitlines() if "it cannot run here" in line] == ["prompt seed=0"]
    assert "error: 1 of the sweep's configs cannot run" in res.output
    assert not (tmp_path / "r" / "runs").exists() or not Store(tmp_path / "r").list()
