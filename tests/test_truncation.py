"""Issue 15 item 4: the share of each split that max_length cuts, stored with the run, and one warning over
10% that suggests the length covering 95% of examples within the model's limit."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.store import Store
from peftbench.tasks.truncation import covering, report, warning
from conftest import write_jsonl


@given(st.lists(st.integers(1, 500), min_size=1, max_size=200))
def test_covering_is_the_smallest_length_95_percent_fit_in(lengths):
    n = covering(lengths)
    assert sum(x <= n for x in lengths) >= 0.95 * len(lengths)
    assert n in lengths and sum(x < n for x in lengths) < 0.95 * len(lengths)


def test_report_and_warning():
    rep = report(({"train": [10] * 80 + [100] * 20, "test": [10] * 95 + [100] * 5}, 64, 4), 512, 64)
    assert rep["shares"] == {"train": 0.2, "test": 0.05} and rep["suggested"] == 104  # 100 + 4 fixed, to a multiple of 8
    line = warning(rep, "k1")
    assert line == "warning: max length 64 cuts 20% of train; --max-length 104 keeps 95% of train whole"
    assert warning(rep, "k1") is None  # once per process
    capped = report(({"train": [1000] * 10}, 64, 0), 128, 64)
    assert capped["suggested"] == 128 and "--max-length 128 (the model's limit)" in warning(capped, "k2")
    assert warning(report(({"train": [10] * 10}, 64, 0), 128, 64), "k3") is None
    # train fits but test is cut: the fix names test's own 95% length, not "the model's limit" (it said so at 200 of 512)
    evals = report(({"train": [10] * 20, "validation": [10] * 6 + [250] * 4, "test": [300] * 10}, 200, 0), 512, 200)
    assert warning(evals, "k4") == ("warning: max length 200 cuts 40% of validation, 100% of test; "
                                    "--max-length 304 keeps 95% of validation and test whole")
    at_limit = report(({"train": [10] * 20, "test": [900] * 10}, 512, 0), 512, 512)
    assert warning(at_limit, "k5").endswith("the model's limit allows no more")


def test_compare_warns_once_and_stores_the_shares(tiny_model, tmp_path):
    long = " ".join(["word"] * 60)
    rows = [{"text": (long if i % 3 == 0 else "short text") + f" {i % 2}", "label": str(i % 2)} for i in range(48)]
    (tmp_path / "d").mkdir()
    for split in ("train", "validation", "test"):
        write_jsonl(tmp_path / "d" / f"{split}.jsonl", rows[:24] if split != "train" else rows)
    res = CliRunner().invoke(app, ["compare", "--model", tiny_model, "--data", str(tmp_path / "d"), "--max-length", "16",
                                   "--batch-size", "8", "--steps", "2", "--methods", "head,lora",
                                   "--results-dir", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stderr.split())
    assert text.count("warning: max length 16 cuts") == 1  # once for the study, not per method
    assert "cuts 33% of train, 33% of validation, 33% of test; --max-length 64 (the model's limit) keeps the most" in text
    for run in json.loads(res.stdout)["runs"]:
        stored = Store(tmp_path / "r").get(run["run_id"]).result["task"]["truncation"]
        assert stored["max_length"] == 16 and abs(stored["shares"]["train"] - 16 / 48) < 1e-9
