"""Mid-run checkpoints (issue 12, item 7): a resumed run ends exactly where an uninterrupted one does.

Each equality test trains a config uninterrupted, then again with checkpoints, stopped by Ctrl-C
(KeyboardInterrupt from the progress reporter) or kill -9 after a checkpoint, then reruns it: the
rerun resumes, and its stored metrics, curve, costs and adapter weights equal the uninterrupted
run's exactly (CPU, one torch thread in every process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from peftbench.config import parse_config
from peftbench.errors import Interrupted
from peftbench.runner import calibrate_flops, config_hash, normalize, run
from peftbench.store import Store
from peftbench.train.checkpoint import AUTO_OVER_SECONDS, AUTO_PERIOD_SECONDS, FILE, Checkpoints, auto_interval
from test_bad_input import invoke

COST_KEYS = ("train_flops", "train_forward_flops", "train_backward_flops", "flop_shapes_counted", "eval_flops",
             "steps", "tokens")


class StopAt:
    """A reporter that presses Ctrl-C after optimizer step `at`."""

    def __init__(self, at: int) -> None:
        self.at = at

    def start(self, total_steps: int) -> None: ...
    def evaluating(self, split: str, done: int, total: int) -> None: ...
    def evaluated(self, point: Any) -> None: ...

    def step(self, step: int) -> None:
        if step == self.at:
            raise KeyboardInterrupt


def config(tiny_config: dict, method: str = "lora", **train: Any) -> dict:
    return {**tiny_config, "method": {"name": method}, "measure": {"latency": False},
            "train": {**tiny_config["train"], **train}}


def digest(raw: dict) -> str:
    return config_hash(normalize(parse_config(raw))[0])


def summary(results: Path) -> dict[str, Any]:
    """The one finished run's stored numbers (wall-clock seconds aside) and its adapter's tensors."""
    with Store(results) as store:
        (row,) = store.list("done")
        curve = [{k: v for k, v in p.items() if k != "seconds"} for p in store.curve(row.run_id)]
    res = row.result
    tensors = {f"{f.name}:{k}": v for f in sorted(row.adapter.glob("*.safetensors")) for k, v in load_file(f).items()}
    return {"test": res["test"], "validation": res["validation"], "best_step": res["best_step"],
            "costs": {k: res["costs"][k] for k in COST_KEYS}, "curve": curve, "tensors": tensors}


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    tensors, want_tensors = got.pop("tensors"), want.pop("tensors")
    assert got == want
    assert tensors.keys() == want_tensors.keys() and tensors
    for k, t in tensors.items():
        assert torch.equal(t, want_tensors[k]), k


def interrupt_then_resume(raw: dict, res: Path, at: int) -> list[str]:
    """Run `raw` until Ctrl-C after step `at`, then rerun it to the end; the rerun's log lines."""
    with pytest.raises(Interrupted):
        run(parse_config(raw), res, reporter=StopAt(at))
    assert (res / "checkpoints" / digest(raw) / FILE).is_file()
    lines: list[str] = []
    run(parse_config(raw), res, log=lines.append)
    return lines


@pytest.mark.parametrize("method, train, at, saved", [
    ("lora", {"steps": 12, "grad_accum": 2, "eval_every": 4, "checkpoint_every": 3}, 8, 6),
    ("adalora", {"steps": 24, "eval_every": 8, "checkpoint_every": 4}, 15, 12),  # the rank allocator's state too
])
def test_a_resumed_steps_run_equals_an_uninterrupted_one(
    method: str, train: dict, at: int, saved: int, tiny_config: dict, tmp_path: Path
) -> None:
    plain = config(tiny_config, method, **{k: v for k, v in train.items() if k != "checkpoint_every"})
    run(parse_config(plain), tmp_path / "a")
    lines = interrupt_then_resume(config(tiny_config, method, **train), tmp_path / "b", at)
    assert any(line.startswith(f"resuming from step {saved} ") for line in lines), lines
    assert_same(summary(tmp_path / "b"), summary(tmp_path / "a"))
    assert not (tmp_path / "b" / "checkpoints").exists(), "a finished run leaves no checkpoint"
    with Store(tmp_path / "b") as store:
        assert sorted(r.status for r in store.list()) == ["done", "interrupted"]


def test_a_resumed_flops_run_equals_an_uninterrupted_one(tiny_config: dict, tmp_path: Path) -> None:
    flops = calibrate_flops(parse_config(config(tiny_config, steps=10)))
    train = {"steps": None, "epochs": None, "flops": float(flops), "eval_every": None}  # 4 quarter points
    run(parse_config(config(tiny_config, **train)), tmp_path / "a")
    # Resumed at step 5, the second quarter point (the next is at step 7): the evaluation schedule resumes too.
    lines = interrupt_then_resume(config(tiny_config, **train, checkpoint_every=5), tmp_path / "b", at=7)
    assert any(line.startswith("resuming from step 5 ") for line in lines), lines
    assert_same(summary(tmp_path / "b"), summary(tmp_path / "a"))


def test_a_seconds_budget_continues_the_saved_training_clock(tiny_config: dict, tmp_path: Path) -> None:
    raw = config(tiny_config, steps=None, seconds=1.0, eval_every=5, checkpoint_every=10)
    res = tmp_path / "res"
    with pytest.raises(Interrupted):
        run(parse_config(raw), res, reporter=StopAt(12))
    blob = torch.load(res / "checkpoints" / digest(raw) / FILE, weights_only=True)
    saved_seconds, saved_curve = blob["clocks"][0], blob["state"]["curve"]
    assert blob["step"] == 10 and [p["step"] for p in saved_curve] == [5, 10]
    run(parse_config(raw), res)
    with Store(res) as store:
        (row,) = store.list("done")
        curve = store.curve(row.run_id)
    assert curve[:2] == saved_curve  # the points before the interruption, seconds and all
    assert all(p["seconds"] > saved_seconds for p in curve[2:])  # the clock went on from the saved seconds
    assert row.result["costs"]["train_seconds"] >= 1.0 and row.result["costs"]["steps"] > 10


def test_kill_9_then_the_same_command_resumes_exactly(tiny_config: dict, tmp_path: Path) -> None:
    raw = config(tiny_config, steps=300, eval_every=100)
    run(parse_config(raw), tmp_path / "a")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    res = tmp_path / "b"
    args = ["run", "--config", str(tmp_path / "run.yaml"), "--checkpoint-every", "20", "--results-dir", str(res)]
    ckpt = res / "checkpoints" / digest(raw) / FILE  # the flag does not change the config hash
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # one thread, as in this process
    proc = subprocess.Popen([sys.executable, "-m", "peftbench.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert ckpt.exists(), "no checkpoint was written before the kill"
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "resuming from step " in result.output
    assert_same(summary(res), summary(tmp_path / "a"))
    assert not ckpt.parent.exists()
    with Store(res) as store:
        assert sorted(r.status for r in store.list()) == ["done", "interrupted"]


class Payload:
    """An object whose unpickling would run code: a checkpoint must never be loaded that way."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "pickle", "other config"])
def test_a_damaged_or_foreign_checkpoint_is_ignored_in_one_line(damage: str, tiny_config: dict, tmp_path: Path) -> None:
    raw = config(tiny_config, checkpoint_every=2)
    run(parse_config(raw), tmp_path / "a")
    res, marker = tmp_path / "b", tmp_path / "ran"
    if damage in ("truncated", "other config"):  # a real checkpoint: from an interrupted run of this config
        with pytest.raises(Interrupted):
            run(parse_config(raw), res, reporter=StopAt(3))
    path = res / "checkpoints" / digest(raw) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "garbage":
        path.write_bytes(os.urandom(300))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "pickle":
        torch.save({"format": 1, "x": Payload(marker)}, path)
    else:
        blob = torch.load(path, weights_only=True)
        torch.save({**blob, "config_hash": "0" * 16}, path)
    lines: list[str] = []
    run(parse_config(raw), res, log=lines.append)
    ignored = [line for line in lines if line.startswith(f"ignoring checkpoint {path}")]
    assert len(ignored) == 1 and "training starts over" in ignored[0], lines
    assert not marker.exists(), "the checkpoint was unpickled unrestricted"
    assert_same(summary(res), summary(tmp_path / "a"))  # started over: as if there had been none
    assert not path.parent.exists()


def test_a_checkpoint_that_cannot_be_written_does_not_stop_the_run(tiny_config: dict, tmp_path: Path) -> None:
    res = tmp_path / "res"
    res.mkdir()
    (res / "checkpoints").write_text("not a folder")
    lines: list[str] = []
    run(parse_config(config(tiny_config, checkpoint_every=1)), res, log=lines.append)
    assert any("checkpoint at step 1 not written" in line for line in lines), lines
    with Store(res) as store:
        assert len(store.list("done")) == 1


def test_checkpoint_every_is_not_part_of_the_config_hash(tiny_config: dict) -> None:
    hashes = {digest(config(tiny_config, **({"checkpoint_every": v} if v != "unset" else {})))
              for v in ("unset", None, "auto", 0, 1, 250)}
    assert len(hashes) == 1
    assert "checkpoint_every" not in parse_config(config(tiny_config, checkpoint_every=5)).canonical()["train"]
    assert parse_config(config(tiny_config, checkpoint_every=5)).model_dump()["train"]["checkpoint_every"] == 5


@pytest.mark.parametrize("value", [-1, True, 1.5, "often"])
def test_bad_checkpoint_every_is_refused_in_one_line(value: Any, tiny_config: dict, tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config(tiny_config, checkpoint_every=value)))
    result = invoke("run", "--config", tmp_path / "run.yaml", "--results-dir", tmp_path / "res")
    assert result.exit_code == 2 and "train.checkpoint_every" in result.output and "Traceback" not in result.output


def test_multi_process_runs_write_no_checkpoints(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    lines: list[str] = []
    ck = Checkpoints(tmp_path, 5, "x", lines.append)
    assert not ck.due(5, 1.0, 0.5) and ck.load(torch.nn.Linear(1, 1)) is None
    assert lines == ["checkpoints are not written in multi-process runs; a killed run starts over"]


# -- the auto rule: on for runs estimated over 10 minutes, about every 5 minutes of training -------------


def test_auto_rule_examples() -> None:
    assert auto_interval(3, 2.0, 0.01) is None  # too early to tell
    assert auto_interval(10, 20.0, 0.5) == 0  # a 40-second run: no checkpoints
    assert auto_interval(10, 10.0, 10 / 1200) == 300  # 1200 steps at 1 s a step: 20 minutes, so every 300 steps
    assert auto_interval(5, 1.0, 1.0) == 0  # finished within the first steps
    assert auto_interval(20, 31.0, 31.0 / 1800) == int(AUTO_PERIOD_SECONDS * 20 / 31.0)  # a 30-minute seconds budget
    assert auto_interval(1, 60.0, 60.0 / 3600) == 5  # one slow step (60 s) of an hour: every 5 steps


@settings(max_examples=300, deadline=None, database=None)
@given(step=st.integers(1, 10**6), per_step=st.floats(1e-4, 1e4), steps_total=st.integers(1, 10**7))
def test_auto_rule_property(step: int, per_step: float, steps_total: int) -> None:
    step = min(step, steps_total)
    seconds, progress = step * per_step, step / steps_total
    got = auto_interval(step, seconds, progress)
    if step < 10 and seconds < 30 and progress < 1.0:
        assert got is None
    elif seconds / progress <= AUTO_OVER_SECONDS:  # the estimated run: per_step x steps_total seconds
        assert got == 0
    else:
        assert got is not None and got >= 1  # as many steps as fit in 5 minutes (at least one)
        assert got == 1 or got * per_step <= AUTO_PERIOD_SECONDS * (1 + 1e-9)
        assert (got + 1) * per_step > AUTO_PERIOD_SECONDS * (1 - 1e-9)


def test_auto_checkpoints_start_only_for_long_runs(tmp_path: Path) -> None:
    ck = Checkpoints(tmp_path, None, "x")
    assert not any(ck.due(s, s * 0.1, s / 100) for s in range(1, 100))  # 10 s: never
    assert ck.every == 0
    lines: list[str] = []
    ck = Checkpoints(tmp_path, None, "x", lines.append)
    due = [s for s in range(1, 3000) if ck.due(s, s * 1.0, s / 3000)]  # 50 minutes at 1 s a step
    assert due == list(range(300, 3000, 300)) and lines == ["checkpoint every 300 steps (the run is estimated over 10 minutes)"]


def test_a_sweep_passes_checkpoint_every_to_its_runs(tiny_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import peftbench.sweep.command as sweep_command
    from peftbench.sweep import expand, run_sweep

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"base": config(tiny_config, checkpoint_every=7), "seeds": 2}))
    jobs: list[Any] = []
    monkeypatch.setattr(sweep_command, "run_inline", lambda j, *a, **k: jobs.extend(j) or [])
    run_sweep(tmp_path / "sweep.yaml", tmp_path / "res")
    assert [parse_config(cfg).train.checkpoint_every for _, cfg in jobs] == [7, 7]
    assert [r.config_hash for r in expand(tmp_path / "sweep.yaml").runs] == [
        digest(config(tiny_config, seed=seed)) for seed in (0, 1)]  # the same runs as without it
