"""Studies without a babysitter (issue 16 item 7): compare --detach, progress lines with an ETA, a rerun
that resumes, and results --watch."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.cli.background import detached_alive, watch
from peftbench.compare.progress import Tracker, progress_line
from peftbench.store import Store
from test_report import config


# -- the progress line and its ETA -----------------------------------------------------------
def test_progress_line_format() -> None:
    assert progress_line(3, 8, "lora seed 1", "41 s", 5.2e10, 138, 1.1e13) == (
        "progress: 3/8 runs (lora seed 1: 41 s); ETA ~2.3 min (1.1e+13 FLOPs left at a measured 5.2e+10 FLOP/s)")
    assert progress_line(1, 4, "base seed 0", "reused from the store", None, None, 3e12) == (
        "progress: 1/4 runs (base seed 0: reused from the store); ETA after the first run that trains here")
    assert progress_line(4, 4, "ia3 seed 2", "3 s", 1e9, 0.0, 0.0) == "progress: 4/4 runs (ia3 seed 2: 3 s); all done"
    assert progress_line(2, 9, "x", "5 s", 1e9, 7300, 1.0).endswith("ETA ~2.0 h (1 FLOPs left at a measured 1e+09 FLOP/s)")


def row(finished: float, flops: float = 0.0, seconds: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(finished=finished, result={"costs": {"train_flops": flops, "train_seconds": seconds}})


def test_eta_divides_the_flops_left_by_the_measured_flops_per_second_plus_each_runs_overhead() -> None:
    t = Tracker({"base": 0.0, "lora": 1e12, "ia3": 5e11}, {"base": 1, "lora": 3, "ia3": 2}, total=6)
    line = t.run_finished("base", "seed 0", row(finished=t.started - 60))  # found in the store: measures nothing
    assert line.startswith("progress: 1/6 runs (base seed 0: reused from the store)") and t.eta() == (None, 4e12)
    t.since = time.time() - 12  # a 12 s run, 10 s of it training 1e12 FLOPs: 1e11 FLOP/s and 2 s overhead
    line = t.run_finished("lora", "seed 0", row(time.time(), 1e12, 10.0))
    eta, left = t.eta()
    assert left == 3e12 and eta == pytest.approx(3e12 / 1e11 + 2.0 * 4, rel=0.02)  # 2 lora + 2 ia3 runs left
    assert re.fullmatch(r"progress: 2/6 runs \(lora seed 0: 12 s\); ETA ~38 s \(3e\+12 FLOPs left at a measured "
                        r"1e\+11 FLOP/s\)", line), line
    t.run_finished("lora", "lr 1e-3 search", None)  # a failed run counts as finished, measures nothing
    t.drop("ia3", 2)  # its search failed: its seeds never run
    assert t.total == 4 and t.eta()[1] == 1e12
    assert t.run_finished("lora", "seed 1", row(time.time(), 1e12, 10.0)).endswith("4/4 runs (lora seed 1: 0 s); all done")


def test_halving_rung_runs_count_their_share_of_the_budget_in_the_eta() -> None:
    """Three rates at 1/4 of the budget, one on to the full budget, two seeds: 4.75 runs' worth of training
    in 6 runs; each quarter run takes a quarter run's FLOPs off what is left."""
    from peftbench.compare.plan import Estimate, Probe, estimate

    from peftbench.config import parse_config

    probe = Probe("lora", True, int(1e10), 0.1, 0.01, {"train": 100, "validation": 10, "test": 10}, 8, 8)
    cfg = parse_config({"train": {"steps": 8}})
    est = estimate(probe, {"kind": "flops", "value": 8e10}, cfg, 2, 4, 0.75 + 1)
    assert (est.runs, est.full_runs) == (6, 3.75) and Estimate("x", 1, 1.0, 1.0, 3).full_runs == 3
    t = Tracker.from_plan([est], {"lora": probe})
    assert t.total == 6 and t.eta()[1] == pytest.approx(3.75 * 8e10)
    for _ in range(3):
        t.run_finished("lora", "search at 0.25 of the budget", None, 0.25)
    assert t.eta()[1] == pytest.approx(3 * 8e10) and t.finished == 3


# -- results --watch -----------------------------------------------------------------------------
def running_store(root: Path) -> tuple[Store, str]:
    store = Store(root)
    cfg = config("lora", {}, 0, 1e-3)
    return store, store.begin("abc123", cfg, "lora", "default", "classification")  # this process: alive


def test_watch_stops_after_the_count_while_a_run_is_running(tmp_path: Path) -> None:
    store, _ = running_store(tmp_path)
    res = CliRunner().invoke(app, ["results", "--watch", "--interval", "0.01", "--watch-count", "3", "--results-dir", str(tmp_path)])
    store.close()
    assert res.exit_code == 0, res.output
    assert res.stdout.count("stored runs") == 3 and res.stdout.count("1 running, 0 done; refreshing every 0.01 s") == 3


def test_watch_stops_when_no_run_is_running(tmp_path: Path) -> None:
    store, run_id = running_store(tmp_path)
    naps: list[float] = []

    def sleep(seconds: float) -> None:  # the run ends during the second wait
        naps.append(seconds)
        if len(naps) == 2:
            store.fail(run_id, "failed", "boom")

    console = Console(record=True, width=200)
    assert watch(tmp_path, console, interval=0.5, sleep=sleep) == 3 and naps == [0.5, 0.5]
    text = console.export_text()
    assert text.count("stored runs") == 3 and text.rstrip().endswith("0 running, 0 done; none running, so watching stops")
    store.close()
    assert CliRunner().invoke(app, ["results", "--watch", "--results-dir", str(tmp_path)]).stdout.count("stored runs") == 1


def test_detach_needs_its_command_line() -> None:
    from peftbench.cli.background import detach
    from peftbench.errors import UserError

    with pytest.raises(UserError, match="--detach re-runs the command line"):
        detach(Path("x"), Console(), argv=["compare"])


# -- compare --detach, killed, and the same command again ---------------------------------------
def test_detach_runs_in_the_background_with_progress_and_the_same_command_resumes(
        tiny_model: str, tiny_data: Path, tmp_path: Path) -> None:
    res = tmp_path / "res"
    args = ["compare", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--batch-size", "8",
            "--eval-batch-size", "16", "--methods", "base,lora", "--budget", "steps", "--steps", "300", "--eval-every", "100",
            "--checkpoint-every", "20", "--results-dir", str(res)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    started = subprocess.run([sys.executable, "-m", "peftbench.cli", *args, "--detach"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    pid = int(re.search(r"in the background as pid (\d+)", started.stdout).group(1))
    log = Path(re.search(r"^log: (.+)$", started.stdout, re.M).group(1))
    assert log.parent == res / "logs" and f"tail -f {log}" in started.stdout
    try:
        deadline = time.time() + 240
        # a whole checkpoint (pathlib's glob also matches the .tmp file being written before its rename)
        while time.time() < deadline and not (list(res.glob("checkpoints/*/state.pt")) and "progress: 1/2" in log.read_text()):
            time.sleep(0.05)
        assert detached_alive(res) == [pid]  # the detached study outlived the command that started it
        text = log.read_text()
        assert text.startswith("$ peftbench compare ") and "--detach" not in text.splitlines()[0]
        assert re.search(r"progress: 1/2 runs \(base seed 0: \d+ s\); ETA after the first run that trains here", text), text
        os.killpg(pid, signal.SIGKILL)  # the terminal, the machine, whatever: the study dies mid-run
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while detached_alive(res) and time.time() < deadline:
        time.sleep(0.05)
    assert not detached_alive(res)
    again = CliRunner().invoke(app, args)  # the same command, in the foreground
    assert again.exit_code == 0, again.output
    assert "progress: 1/2 runs (base seed 0: reused from the store)" in again.stderr
    assert "resuming from step " in again.stderr and "progress: 2/2 runs (lora seed 0: " in again.stderr
    with Store(res) as store:
        assert sorted((r.method, r.status) for r in store.list()) == [("base", "done"), ("lora", "done"), ("lora", "interrupted")]
