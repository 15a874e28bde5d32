"""Issue 15: a study is checked whole before anything trains; a failure midway still prints the finished
methods' table with the failures under it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
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
    assert re.findall(r"(\w+): it cannot run here", res.output) == ["prompt", "prefix"]
    assert "Traceback" not in res.output
    assert not (tmp_path / "r" / "runs").exists() or not Store(tmp_path / "r").list()  # nothing trained


def test_unfit_default_methods_are_dropped_with_one_line_each(tiny_model, tmp_path):
    res = CliRunner().invoke(app, ["compare", *mc_args(tiny_model, tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert re.findall(r"(\w+): dropped, it cannot run here", res.stderr) == ["prompt"]
    methods = [r["method"] for r in json.loads(res.stdout)["runs"]]
    assert methods == ["base", "head", "full", "lora", "ia3"]


def test_a_failure_midway_keeps_the_table_and_lists_the_failure(tiny_model, tiny_data, tmp_path, monkeypatch):
    from peftbench.methods.ia3 import IA3

    def broken(self, model, ctx):
        raise RuntimeError("disk on fire")

    from peftbench.compare import plan

    real, sizes = plan.probe, {"train": 1, "validation": 1, "test": 1}
    monkeypatch.setattr(plan, "probe", lambda cfg, label: plan.Probe(label, True, 1, 1.0, 1.0, sizes, 2, 8)
                        if cfg.method.name == "ia3" else real(cfg, label))  # the check passes; the run then fails
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
    assert res.output.count("it cannot run here") == 1 and "prompt seed=0: it cannot run here: " in res.output
    assert "error: 1 of the sweep's configs cannot run" in res.output
    assert not (tmp_path / "r" / "runs").exists() or not Store(tmp_path / "r").list()


def test_dry_run_prints_the_plan_and_stores_nothing(tiny_model, tiny_data, tmp_path):
    res = CliRunner().invoke(app, ["compare", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32",
                                   "--batch-size", "8", "--steps", "8", "--methods", "base,lora,full", "--seeds", "2",
                                   "--results-dir", str(tmp_path / "r"), "--dry-run"])
    assert res.exit_code == 0, res.output
    err = res.stderr
    assert "budget: measuring lora's training FLOPs for 8 steps" in err  # progress while it is measured
    assert err.index("budget: measuring") < err.index("plan: 3 methods")
    plan = err[err.index("plan: 3 methods"):].splitlines()
    assert "1 seed" not in plan[0] and "2 seeds" in plan[0]
    rows = {line.split()[0]: line for line in plan[1:4]}
    assert "nothing trains" in rows["base"]
    assert "~8 steps (0.67 epochs)" in rows["lora"] and "2 runs x" in rows["lora"]  # its own steps set the budget
    assert "steps" in rows["full"] and "estimated wall time ~" in plan[4]
    assert not (tmp_path / "r").exists()


def test_estimates_follow_the_budget():
    from peftbench.compare.plan import Probe, estimate, lines
    from peftbench.config import parse_config

    sizes = {"train": 100, "validation": 10, "test": 20}
    lora = Probe("lora", True, 1000, 0.5, 0.01, sizes, 8, 10)
    full = Probe("full", True, 2000, 1.0, 0.01, sizes, 8, 10)
    cfg = parse_config({"train": {"steps": 8}})
    budget = {"kind": "flops", "value": 8000.0, "method": "lora"}
    est = {p.label: estimate(p, budget, cfg, 1, 0, refs={"lora": lora, "full": full}) for p in (lora, full)}
    assert (est["lora"].steps, est["full"].steps) == (8, 4) and est["full"].epochs == 0.4
    assert est["full"].seconds == 4 * 1.0 + 0.01 * (4 * 10 + 20)
    secs = estimate(lora, {"kind": "seconds", "value": 100.0}, cfg, 3, 2)
    assert secs.steps == 200 and secs.runs == 5
    text = lines([secs], "100 training seconds each")
    assert text[1].split() == ["lora", "~200", "steps", "(20", "epochs)", "5", "runs", "x", "~1.7", "min"]
    assert text[-1].startswith("  estimated wall time ~8.4 min")


names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


@given(st.lists(st.tuples(names, st.dictionaries(names, st.integers(0, 99) | st.sampled_from([0.5, "all-linear"]), max_size=3)),
                min_size=1, max_size=4))
def test_methods_with_params_parse_back(entries):
    from peftbench.cli.run import method_items

    text = ",".join(n + (f"({', '.join(f'{k}={v}' for k, v in p.items())})" if p else "") for n, p in entries)
    want = [{"name": n, "params": p} if p else n for n, p in entries]
    assert method_items(text) == want


def test_a_bad_methods_entry_is_one_line():
    res = CliRunner().invoke(app, ["compare", "--methods", "lora(r)", "--dry-run"])
    assert res.exit_code == 2 and "is not name(key=value, ...)" in res.output


def test_the_plan_times_two_generated_examples_and_no_warm_up(tiny_models, tmp_path, monkeypatch):
    """Generating costs seconds an example on a CPU: the plan generates 2 validation examples per method,
    in one timed call, with no warm-up generation before it."""
    from conftest import write_jsonl
    from peftbench.compare.plan import probe
    from peftbench.config import parse_config
    from peftbench.tasks.generation import GenerationTask
    from test_generation import config, dialogue_rows

    for split, n in (("train", 8), ("validation", 12), ("test", 4)):
        write_jsonl(tmp_path / f"{split}.jsonl", dialogue_rows(n, 1))
    limits: list[int | None] = []
    real = GenerationTask.evaluate

    def spy(self, model, split, batch_size, *args, limit=None, **kw):
        limits.append(limit)
        return real(self, model, split, batch_size, *args, limit=limit, **kw)

    monkeypatch.setattr(GenerationTask, "evaluate", spy)
    cfg = parse_config(config(tiny_models("llama"), tmp_path, "summarization"))
    p = probe(cfg, "lora")
    assert limits == [2] and p.eval_seconds > 0 and p.step_flops > 0
