"""One run over two processes (torchrun, as `accelerate launch` does on GPUs), here on CPU with gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from peftbench.store import Store


def launch(tiny_model: str, tiny_data: Path, results: Path, *extra: str) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29531", "-m", "peftbench.cli", "run",
            "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--batch-size", "8",
            "--eval-batch-size", "16", "--results-dir", str(results), "--json", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)


def test_two_processes_store_one_run_with_both_shares(tiny_model, tiny_data, tmp_path):
    two = launch(tiny_model, tiny_data, tmp_path / "two", "--steps", "4")
    assert two.returncode == 0, two.stderr[-3000:]
    doc = json.loads(two.stdout)  # only the main process prints
    assert doc["status"] == "done" and doc["result"]["processes"] == 2
    rows = Store(tmp_path / "two").list()
    assert len(rows) == 1 and rows[0].done

    from peftbench.config import parse_config
    from peftbench.runner import run

    one = run(parse_config({
        "model": {"name": tiny_model}, "task": {"data": {"source": str(tiny_data)}, "max_length": 32},
        "method": {"name": "lora"}, "train": {"steps": 8, "batch_size": 8, "eval_batch_size": 16},
    }), tmp_path / "one").row.result["costs"]
    # 4 steps on 2 processes consume the same 8 batches as 8 single-process steps: same FLOPs and tokens.
    costs = doc["result"]["costs"]
    assert costs["steps"] == 4
    assert costs["tokens"] == one["tokens"]
    assert costs["train_flops"] == one["train_flops"]


def test_flops_budget_counts_every_process(tiny_model, tiny_data, tmp_path):
    from peftbench.config import parse_config
    from peftbench.runner import calibrate_flops

    budget = calibrate_flops(parse_config({
        "model": {"name": tiny_model}, "task": {"data": {"source": str(tiny_data)}, "max_length": 32},
        "method": {"name": "lora"}, "train": {"steps": 6, "batch_size": 8, "eval_batch_size": 16},
    }), 6)
    res = launch(tiny_model, tiny_data, tmp_path, "--flops", str(budget))
    assert res.returncode == 0, res.stderr[-3000:]
    costs = json.loads(res.stdout)["result"]["costs"]
    assert costs["steps"] == 3  # 6 batches' FLOPs, 2 per step
    assert costs["train_flops"] == budget
