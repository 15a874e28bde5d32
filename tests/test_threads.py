"""Issue 14 item 6: torch threads from the free cores, a passive wait policy on a shared machine,
both recorded with the run, and --threads / --wait-policy override them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.store import Store
from peftbench.train import threads

CORES = st.integers(1, 256)
LOAD = st.floats(min_value=0.0, max_value=512.0, allow_nan=False)
SRC = str(Path(__file__).parents[1] / "src")


@settings(max_examples=300, deadline=None)
@given(cores=CORES, load=LOAD, cap=st.integers(1, 256))
def test_choice_is_between_one_and_the_cap(cores: int, load: float, cap: int) -> None:
    n = threads.choose(cores, load, cap)
    assert isinstance(n, int) and 1 <= n <= min(cores, cap)
    assert n == min(cap, max(1, cores - round(load))) or abs(load % 1 - 0.5) < 1e-9  # ties round up the free share


@settings(max_examples=300, deadline=None)
@given(cores=CORES, a=LOAD, b=LOAD)
def test_more_load_never_means_more_threads(cores: int, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert threads.choose(cores, hi) <= threads.choose(cores, lo)


@settings(max_examples=200, deadline=None)
@given(cores=CORES, load=st.floats(min_value=0.0, max_value=0.49), cap=st.integers(1, 256))
def test_an_idle_machine_keeps_torchs_own_count(cores: int, load: float, cap: int) -> None:
    assert threads.choose(cores, load, cap) == min(cores, cap)
    assert not threads.is_shared(load)


@given(cores=CORES, extra=st.floats(min_value=0.0, max_value=100.0))
def test_a_machine_busy_everywhere_leaves_one_thread_and_is_shared(cores: int, extra: float) -> None:
    load = cores - 0.5 + extra
    assert threads.choose(cores, load) == 1 and threads.is_shared(load)
    assert threads.choose(cores, float("inf")) == 1 and threads.is_shared(float("inf"))  # no load average: be modest


def test_a_busy_core_is_taken_off() -> None:
    assert [threads.choose(2, x) for x in (0.0, 0.36, 0.6, 1.0, 1.4, 2.7)] == [2, 2, 1, 1, 1, 1]
    assert [threads.choose(8, x, cap=4) for x in (0.0, 3.9, 4.6, 6.2)] == [4, 4, 3, 2]


def test_own_load_follows_the_kernels_average_of_this_process() -> None:
    clock, cpu = [0.0], [0.0]
    own = threads.OwnLoad(lambda: clock[0], lambda: cpu[0])
    for _ in range(60):  # 10 minutes at 2 busy threads: its share of the load tends to 2
        clock[0] += 10
        cpu[0] += 20
        own.now()
    assert own.now() == pytest.approx(2.0, abs=1e-3)
    clock[0] += 60  # then a minute idle: it decays by e
    assert own.now() == pytest.approx(2.0 / 2.718281828, rel=1e-3)


def test_bad_overrides_are_refused_in_one_line(tiny_config_args: list[str]) -> None:
    for args, words in ((["--wait-policy", "lazy"], "--wait-policy 'lazy'"), (["--threads", "0"], "--threads must"),
                        (["--threads", "many"], "--threads must be a count of at least 1 or auto (got 'many')")):
        res = CliRunner().invoke(app, ["run", *tiny_config_args, *args])
        assert res.exit_code == 2, res.output
        assert words in res.output and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def stored_threads(out: str, results: Path) -> dict:
    """The run's thread record, less its matmul backend (test_matmul.py checks that)."""
    rec = Store(results).get(json.loads(out)["run_id"]).result["threads"]
    assert set(rec["matmul"]) == {"backend", "why"}
    return {k: v for k, v in rec.items() if k != "matmul"}


def test_the_flag_sets_the_count_and_the_run_records_it(tiny_config_args: list[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_state", {"fixed": None, "default": 2})  # torch's count at start
    res = CliRunner().invoke(app, ["run", *tiny_config_args, "--threads", "1", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert stored_threads(res.stdout, tmp_path) == {"count": 1, "wait_policy": threads.wait_policy(), "why": "--threads"}
    assert torch.get_num_threads() == 1
    # torch is already running in this process, so a policy asked for now is noted, not pretended
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    res = CliRunner().invoke(app, ["run", *tiny_config_args, "--wait-policy", "passive", "--force", "--json"])
    assert res.exit_code == 0, res.output
    assert "wait policy passive not applied: torch started with default" in res.stderr
    rec = stored_threads(res.stdout, tmp_path)
    assert rec == {"count": 2, "wait_policy": "default", "why": "torch default"}  # the flag held for one command


def test_by_default_the_load_changes_neither_the_threads_nor_the_scores(
        tiny_config_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread count changes torch's reduction order, so a load-dependent count made scores depend on
    what else ran on the machine. Without --threads, an idle and a busy machine give the same run."""
    monkeypatch.setattr(threads, "_state", {"fixed": None, "default": 2})
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    runs = []
    for load in (0.0, 1.7):
        monkeypatch.setattr(threads, "other_load", lambda load=load: load)
        res = CliRunner().invoke(app, ["run", *tiny_config_args, "--force", "--json"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        runs.append(Store(tmp_path).get(json.loads(res.stdout)["run_id"]).result)
        assert runs[-1]["threads"]["count"] == 2 and runs[-1]["threads"]["why"] == "torch default"
        assert torch.get_num_threads() == 2
    assert runs[0]["test"] == runs[1]["test"] and runs[0]["validation"] == runs[1]["validation"]
    assert runs[0]["samples"] == runs[1]["samples"]


def test_auto_takes_the_free_cores(tiny_config_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_state", {"fixed": None, "default": 2})
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    for load, want in ((0.2, 2), (1.1, 1)):
        monkeypatch.setattr(threads, "other_load", lambda load=load: load)
        res = CliRunner().invoke(app, ["run", *tiny_config_args, "--threads", "auto", "--force", "--json"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert stored_threads(res.stdout, tmp_path) == {"count": want, "wait_policy": threads.wait_policy(),
                                                        "why": f"auto: 2 cores, other load {load:.2f}"}
        assert torch.get_num_threads() == want


def test_sweep_workers_split_the_cores_and_record_it(tiny_config: dict, tmp_path: Path) -> None:
    import yaml

    from peftbench.sweep.local import cores

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": {**tiny_config, "train": {**tiny_config["train"], "steps": 1}},
                                     "axes": {"train.seed": [0, 1]}}))
    res = CliRunner().invoke(app, ["sweep", str(sweep), "--workers", "2", "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    store = Store(tmp_path / "r")
    recs = [store.get(r.run_id).result["threads"] for r in store.list()]
    want = max(1, cores() // 2)
    assert len(recs) == 2 and all(r["count"] == want and r["why"] == f"sweep: {cores()} cores / 2 workers" for r in recs)
    assert all(r["matmul"] == recs[0]["matmul"] and r["matmul"]["backend"] in ("onednn", "torch") for r in recs)


WAIT = """
import sys, time
from peftbench.train import threads
threads.start(None, sys.argv[1])
import torch
torch.set_num_threads(2)
a = torch.randn(256, 256)
for _ in range(20):
    a @ a
c0 = time.process_time(); time.sleep(0.4); print(threads.wait_policy(), time.process_time() - c0)
"""


@pytest.mark.skipif(threads.usable_cores() < 2, reason="spinning needs a second core")
def test_the_policy_set_before_torch_starts_is_the_one_openmp_uses() -> None:
    """Measured: after a parallel op, active threads burn CPU while the main thread sleeps; passive ones do not."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = SRC
    spent = {}
    for policy in ("active", "passive"):
        out = subprocess.run([sys.executable, "-c", WAIT, policy], env=env, capture_output=True, text=True, check=True)
        name, cpu = out.stdout.split()
        assert name == policy
        spent[policy] = float(cpu)
    assert spent["active"] > 0.05 and spent["passive"] < 0.02, spent


def test_other_load_is_sampled_now_not_a_minute_late(monkeypatch):
    import subprocess
    import sys

    from peftbench.train import threads

    ticks = iter([(1000, 4000), (1000 + 60, 4000 + 120)])  # half of all ticks busy over the window
    monkeypatch.setattr(threads, "_busy_ticks", lambda: next(ticks))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    assert abs(threads.busy_now(0.01) - 1.0) < 0.2  # one of two cores, less this process's own (sleeping) share
    monkeypatch.undo()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert threads.other_load() > 0.6  # a real busy process is seen at once
    finally:
        burner.kill()
