"""Sweeps: expansion of a sweep file, one-line refusals, running, resuming after kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from peftbench.errors import UserError
from peftbench.store import Store
from peftbench.sweep import expand, run_sweep


def write(tmp_path: Path, doc: dict | str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def base(tiny_config: dict) -> dict:
    return {**tiny_config, "measure": {"latency": False}}


# -- expansion -------------------------------------------------------------------------
def test_product_of_axes_with_method_grid_and_seeds(base: dict, tmp_path: Path) -> None:
    sweep = expand(write(tmp_path, {
        "name": "abl", "base": base, "seeds": 2,
        "axes": {"method": [{"name": "lora", "grid": {"r": [2, 4], "target_modules": [["query", "value"], "all-linear"]}}, "ia3"],
                 "train.lr": [1e-3, 3e-3]},
    }))
    assert sweep.name == "abl" and sweep.duplicates == 0
    assert len(sweep.runs) == (4 + 1) * 2 * 2 == len({r.config_hash for r in sweep.runs})
    first = sweep.runs[0].config
    assert first.method.params["r"] == 2 and first.method.params["target_modules"] == ["query", "value"]
    assert (first.train.lr, first.train.seed, first.train.steps) == (1e-3, 0, 4)
    assert sweep.runs[0].label == "lora r=2 target_modules=query,value lr=0.001 seed=0"
    assert sweep.runs[-1].label == "ia3 lr=0.003 seed=1"
    assert {r.config.method.name for r in sweep.runs} == {"lora", "ia3"}
    # ia3 starts from its own defaults, not the base's lora settings
    assert "r" not in sweep.runs[-1].config.method.params


def test_section_shorthands_and_same_method_keeps_base_params(base: dict, tmp_path: Path) -> None:
    base = {**base, "method": {"name": "lora", "params": {"target_modules": ["query"]}}}
    sweep = expand(write(tmp_path, {"base": base, "axes": {
        "model": [base["model"]["name"]], "task": ["classification"], "method": ["lora", "ia3"]}}))
    lora, ia3 = (r.config for r in sweep.runs)
    assert lora.method.params["target_modules"] == ["query"], "same method: base params kept"
    assert ia3.method.name == "ia3" and ia3.method.params["target_modules"] != ["query"]
    assert lora.model.name == base["model"]["name"] and lora.task.kind == "classification"
    assert [r.label for r in sweep.runs] == ["lora", "ia3"]  # one-entry axes do not show in labels


def test_named_axis_deep_merges_and_its_budget_replaces_the_base_budget(base: dict, tmp_path: Path) -> None:
    sweep = expand(write(tmp_path, {"base": base, "axes": {"study": [
        {"task": {"max_length": 16}, "train": {"flops": 1.0e9}},
        {"label": "half-epoch", "train": {"epochs": 0.5, "lr": 1e-3}},
    ]}}))
    a, b = (r.config for r in sweep.runs)
    assert a.train.flops == 1e9 and a.train.steps is None and a.task.max_length == 16
    assert a.task.data.source == base["task"]["data"]["source"], "deep-merged: the base's data stays"
    assert b.train.epochs == 0.5 and b.train.steps is None and b.train.lr == 1e-3 and b.task.max_length == 32
    assert [r.label for r in sweep.runs] == ["lora study=1", "lora half-epoch"]


def test_duplicate_configs_are_dropped_and_counted(base: dict, tmp_path: Path) -> None:
    # r=8 is lora's default and 2e-3 its default rate: the same configs once normalized
    sweep = expand(write(tmp_path, {"base": base, "axes": {
        "method": ["lora", {"name": "lora", "params": {"r": 8}}], "train.lr": [None, 2e-3]}}))
    assert len(sweep.runs) == 1 and sweep.duplicates == 3


BAD = [
    ({"axis": {}}, ["unknown key 'axis'", "did you mean 'axes'"]),
    ({"base": {"train": {"lrr": 1}}}, ["base", "train.lrr", "did you mean 'lr'"]),
    ({"axes": {"train.lrr": [1]}}, ["axis 'train.lrr'", "did you mean 'train.lr'"]),
    ({"axes": {"method": ["lora", "lorra"]}}, ["axis 'method' entry 2", "unknown method 'lorra'", "did you mean 'lora'"]),
    ({"axes": {"method": [{"name": "lora", "grid": {"r": [4, 0]}}]}}, ["axis 'method' entry 1", "{r: 0}", "'r'", "greater than or equal to 1"]),
    ({"axes": {"method": [{"name": "lora", "params": {"rank": 4}}]}}, ["axis 'method' entry 1", "did you mean 'r'"]),
    ({"axes": {"method": [{"name": "lora", "r": 4}]}}, ["axis 'method' entry 1", "unknown method entry key 'r'", "grid:"]),
    ({"axes": {"train.lr": [1e-3, -1]}}, ["axis 'train.lr' entry 2", "train.lr", "greater than 0"]),
    ({"axes": {"train.seed": []}}, ["axis 'train.seed' is empty"]),
    ({"axes": {"train.lr": 0.001}}, ["axis 'train.lr' must be a list", "[a, b]"]),
    ({"axes": {"lr": [0.001]}}, ["axis 'lr' entry 1", "partial configs", "did you mean 'train.lr'"]),
    ({"axes": {"study": [{"trian": {"lr": 1}}]}}, ["axis 'study' entry 1", "unknown config key 'trian'", "did you mean 'train'"]),
    ({"axes": {"method": ["lora", "ia3"], "method.params.r": [4]}}, ["run 2 of 2", "ia3", "no hyper-parameter 'r'", "method axis entry"]),
    ({"seeds": 2, "axes": {"train.seed": [0]}}, ["seeds: or the axis train.seed"]),
    ({"seeds": "three"}, ["seeds: must be a count"]),
    ("axes: [unclosed", ["sweep file", "not valid YAML at line"]),
    ("- just a list", ["must hold a mapping"]),
]


@pytest.mark.parametrize("doc,expected", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_sweep_file_is_refused_in_one_line(base: dict, tmp_path: Path, doc: dict | str, expected: list[str]) -> None:
    if isinstance(doc, dict):
        doc = {**doc, "base": {**base, **doc.get("base", {})}}
    path = write(tmp_path, doc, "bad-sweep.yaml")
    with pytest.raises(UserError) as info:
        expand(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    for part in expected:
        assert part in msg, msg


# -- running ---------------------------------------------------------------------------
def test_sweep_runs_skips_done_and_goes_on_after_failures(base: dict, tmp_path: Path, monkeypatch) -> None:
    import peftbench.runner as runner

    real_train = runner.train

    def train(model, method, task, spec, *a, **k):  # seed 1 crashes mid-training
        if spec.seed == 1:
            raise RuntimeError("simulated crash")
        return real_train(model, method, task, spec, *a, **k)

    monkeypatch.setattr(runner, "train", train)
    bad = write(tmp_path, {"base": base, "axes": {
        "task.data.source": [base["task"]["data"]["source"], str(tmp_path / "missing")], "train.seed": [0, 1]}})
    lines: list[str] = []
    with pytest.raises(UserError, match="1 of the sweep's configs cannot run"):  # bad data: refused before any run
        run_sweep(bad, tmp_path / "refused", log=lines.append)
    unfit = [s for s in lines if "cannot run here" in s]
    assert len(unfit) == 1 and unfit[0].startswith("lora source=missing seed=0: it cannot run here: ") and "missing" in unfit[0]
    assert not (tmp_path / "refused" / "results.sqlite").exists()

    path = write(tmp_path, {"base": base, "axes": {"train.seed": [0, 1, 2]}})
    res, lines = tmp_path / "res", []
    summary = run_sweep(path, res, log=lines.append)
    assert summary.total == 3 and summary.already_done == 0
    assert [o.status for o in summary.outcomes] == ["done", "failed", "done"]  # a crash midway: the sweep goes on
    assert "simulated crash" in summary.failed[0].error
    assert lines[0].startswith(f"sweep {path.stem}: 3 runs (0 done, 3 to run)")
    assert lines[1] == "[1/3] lora seed=0: started"
    assert lines[2].startswith("[1/3] lora seed=0: done macro_f1 0.") and " s, " in lines[2]
    assert sum(s.startswith("  failed [") for s in lines) == 1
    rows = Store(res).list()
    assert sorted(r.status for r in rows) == ["done", "done", "failed"], "the crash is stored as failed"

    again: list[str] = []
    summary = run_sweep(path, res, log=again.append)
    assert summary.already_done == 2 and len(summary.outcomes) == 1
    assert any(s.startswith("[1/3]") and f"skipped (already done as {rows[0].run_id})" in s for s in again)


def test_bad_arguments_and_missing_ray(base: dict, tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path, {"base": base})
    for kwargs, part in (({"backend": "dask"}, "unknown backend 'dask'"), ({"workers": 0}, "at least 1"),
                         ({"address": "ray://x:10001"}, "--backend ray")):
        with pytest.raises(UserError, match=part):
            run_sweep(path, tmp_path / "res", log=lambda s: None, **kwargs)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserError, match=r"pip install 'peftbench\[ray\]'"):
        run_sweep(path, tmp_path / "res", backend="ray", log=lambda s: None)


# -- resuming after kill -9 ----------------------------------------------------------------
def _statuses(db: Path) -> list[tuple[str, str, str, int]]:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT run_id, config_hash, status, pid FROM runs").fetchall()
    except sqlite3.OperationalError:  # the file exists a moment before its tables
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_mid_sweep_then_rerun_gives_every_config_one_done_run(base: dict, tmp_path: Path, workers: int) -> None:
    base = {**base, "train": {**base["train"], "steps": 12, "eval_every": 6}}
    path = write(tmp_path, {"base": base, "axes": {"train.seed": [0, 1, 2, 3]}})
    res, running = tmp_path / "res", []
    code = f"from pathlib import Path; from peftbench.sweep import run_sweep; run_sweep(Path({str(path)!r}), Path({str(res)!r}), workers={workers})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:  # wait for one finished run and one in progress
            rows = _statuses(res / "results.sqlite")
            if any(r[2] == "done" for r in rows) and any(r[2] == "running" for r in rows):
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("never saw a done run next to a running one")
        os.kill(proc.pid, signal.SIGKILL)  # only the parent: workers must notice and stop by themselves
        proc.wait()
        running = [r[3] for r in _statuses(res / "results.sqlite") if r[2] == "running"]
        assert running, "a run was in progress when the sweep was killed"
        end = time.time() + 15
        while any(_alive(p) for p in running) and time.time() < end:
            time.sleep(0.1)
        assert not any(_alive(p) for p in running), "an orphaned worker kept running"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a safety net only; normally nothing is left
        except ProcessLookupError:
            pass
    before = {r[0]: r[1] for r in _statuses(res / "results.sqlite") if r[2] == "done"}

    lines: list[str] = []
    summary = run_sweep(path, res, workers=workers, log=lines.append)
    assert summary.already_done == len(before) and not summary.failed
    hashes = {r.config_hash for r in expand(path).runs}
    rows = Store(res).list()
    done = [r for r in rows if r.status == "done"]
    assert sorted(r.config_hash for r in done) == sorted(hashes), "every config exactly one done run"
    assert {r.run_id: r.config_hash for r in done if r.run_id in before} == before, "finished runs were not re-run"
    interrupted = [r for r in rows if r.status == "interrupted"]
    assert len(interrupted) == len(running) and len(rows) == 4 + len(running), "killed runs stay as history"
