"""Issue 14 item 1: a study prepares once. Data, tokenization, untuned samples and FLOP counts per shape
are built by the first run that needs them and reused by the rest of the process, with every stored
number exactly as when each run builds its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from peftbench import reuse
from peftbench.cli import app
from peftbench.measure import flops
from peftbench.store import Store
from peftbench.tasks import sources

COSTS = ("train_flops", "train_forward_flops", "train_backward_flops", "flop_shapes_counted", "eval_flops", "steps", "tokens")


def study(model: str, data: Path, results: Path) -> list[dict[str, Any]]:
    args = ["compare", "--model", model, "--data", str(data), "--max-length", "32", "--batch-size", "8",
            "--eval-batch-size", "16", "--methods", "base,lora,ia3", "--steps", "4", "--seeds", "2",
            "--samples", "3", "--results-dir", str(results), "--json"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    store = Store(results)
    out = []
    for r in json.loads(res.stdout)["runs"]:
        got = store.get(r["run_id"]).result
        curve = [{k: v for k, v in p.items() if k != "seconds"} for p in store.curve(r["run_id"])]
        out.append({"method": r["method"], "test": got["test"], "validation": got["validation"], "curve": curve,
                    "costs": {k: got["costs"][k] for k in COSTS}, "samples": got["samples"],
                    "budget": got["budget"], "lr": got["lr"]})
    return out


class Calls:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        self.n = 0
        real = getattr(owner, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.n += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)


def test_a_study_prepares_once_and_stores_the_same_numbers(tiny_model, tiny_data, tmp_path, monkeypatch):
    reads, counts = Calls(monkeypatch, sources, "_read_splits"), Calls(monkeypatch, flops, "counter")
    monkeypatch.setattr(reuse, "ENABLED", False)
    alone = study(tiny_model, tiny_data, tmp_path / "alone")
    reads_alone, counts_alone = reads.n, counts.n
    reads.n = counts.n = 0
    monkeypatch.setattr(reuse, "ENABLED", True)
    shared = study(tiny_model, tiny_data, tmp_path / "shared")
    assert shared == alone  # metrics, curves, FLOPs, samples: to the last digit
    assert reads_alone == 10 and reads.n == 1  # 3 plan probes + calibration + 6 runs read the files; then once
    # calibration's counted shapes serve lora's runs; each method's shapes are counted by its first seed only
    assert counts.n < counts_alone / 1.5
    assert all(r["samples"] for r in shared) and shared[0]["samples"] == shared[2]["samples"]


def test_untuned_samples_are_keyed_by_the_random_state(tiny_model, tiny_data):
    import torch

    calls = []

    def compute() -> list[int]:
        calls.append(1)
        return [int(torch.randint(0, 100, ()))]  # consumes randomness, as sampling would

    torch.manual_seed(0)
    first, after_first = reuse.untuned(("x",), compute), torch.get_rng_state()
    torch.manual_seed(0)
    again = reuse.untuned(("x",), compute)
    assert again == first and len(calls) == 1
    assert torch.equal(torch.get_rng_state(), after_first)  # the run goes on as if it had computed them
    torch.manual_seed(1)
    reuse.untuned(("x",), compute)
    assert len(calls) == 2  # another seed: computed anew


def test_rewritten_data_is_read_anew(tmp_path):
    import os

    from peftbench.config import DataSpec

    f = tmp_path / "train.csv"
    f.write_text("text,label\na,0\n")
    spec = DataSpec(source=str(tmp_path))
    loads = []
    reuse.splits(spec, lambda: loads.append(1) or {})
    reuse.splits(spec, lambda: loads.append(1) or {})
    assert len(loads) == 1
    f.write_text("text,label\na,0\nb,1\n")
    os.utime(f, ns=(1, 1))  # a new size and time
    reuse.splits(spec, lambda: loads.append(1) or {})
    assert len(loads) == 2


def test_caches_keep_the_recent_setups_only():
    recent = reuse.Recent(2)
    recent["a"], recent["b"] = 1, 2
    assert recent["a"] == 1  # used: now the newest
    recent["c"] = 3
    assert list(recent) == ["a", "c"] and recent.setdefault("d", 4) == 4 and list(recent) == ["c", "d"]
