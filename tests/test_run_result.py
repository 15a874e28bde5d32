"""The typed run result: results stored by the code before it (tests/fixtures/store_v0) read back
with the same numbers, and what is written round-trips byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.report.aggregate import aggregate
from peftbench.report.formats import to_json
from peftbench.report.tables import summary
from peftbench.store import Costs, Latency, RunResult, Store

FIXTURE = Path(__file__).parent / "fixtures" / "store_v0"
EXPECTED = FIXTURE / "expected"


@pytest.fixture()
def old(tmp_path: Path) -> Path:
    """A copy of the old store (opening a store may write to it)."""
    dst = tmp_path / "store_v0"
    shutil.copytree(FIXTURE, dst, ignore=shutil.ignore_patterns("expected"))
    return dst


def test_old_metrics_json_round_trips_byte_for_byte() -> None:
    folders = sorted((FIXTURE / "runs").iterdir())
    assert len(folders) == 5
    for folder in folders:
        text = (folder / "metrics.json").read_text()
        config = json.loads((folder / "config.json").read_text())
        assert json.dumps(RunResult.from_dict(json.loads(text), config).to_dict(), indent=2) == text


def test_old_store_reads_typed_with_the_same_numbers(old: Path) -> None:
    with Store(old) as store:
        rows = store.list()
        assert [r.status for r in rows] == ["done"] * 5
        for row in rows:
            stored = json.loads((row.folder / "metrics.json").read_text())
            result = store.result(row.run_id)
            assert isinstance(result, RunResult) and isinstance(result.costs, Costs)
            assert result.test == stored["test"] and result.validation == stored["validation"]
            assert result.costs.train_flops == stored["costs"]["train_flops"]
            assert result.costs.adapter_bytes == stored["costs"]["adapter_bytes"]
            assert result.budget.to_dict() == stored["budget"] and result.lr == stored["lr"]
            assert result.versions == stored["versions"] and result.select_metric == "macro_f1"
            assert [s.to_dict() for s in result.samples] == stored["samples"]
            assert store.curve(row.run_id) == json.loads((row.folder / "curve.json").read_text())
            preds = store.predictions(row.run_id)
            if result.test is None:  # the learning-rate search run scored no test
                assert preds is None and not (row.folder / "predictions.json").exists()
            else:
                assert preds.to_dict() == json.loads((row.folder / "predictions.json").read_text())
                assert len(result.samples) == 3 and result.labels == ["anger", "joy", "sadness"]
            assert row.adapter.is_dir()
        lora = next(store.result(r.run_id) for r in rows if r.method == "lora" and r.run_result.test)
        assert isinstance(lora.costs.latency, Latency) and isinstance(lora.costs.latency.merged, Latency)
        assert lora.costs.value("latency.merged.b1_ms") == lora.costs.latency.merged.b1_ms > 0


def test_old_store_lists_shows_and_reports_as_before(old: Path) -> None:
    listing = json.loads((EXPECTED / "results.json").read_text())
    with Store(old) as store:
        for row in store.list():
            if "crashed" in listing[row.run_id]:  # the old listing failed on a run without test scores
                assert summary(row)["test_macro_f1"] is None
            else:
                assert summary(row) == listing[row.run_id]
    cli = CliRunner()
    for expected in sorted(EXPECTED.glob("show-*.json")):
        run_id = expected.stem.removeprefix("show-")
        shown = cli.invoke(app, ["results", "show", run_id, "--results-dir", str(old), "--json"], catch_exceptions=False)
        doc = json.loads(shown.stdout)
        doc["folder"] = str(Path(doc["folder"]).relative_to(old))
        assert doc == json.loads(expected.read_text())
    rep = json.loads(to_json(aggregate(old, resamples=200)))
    rep.pop("created"), rep.pop("results_dir")
    for section in rep["sections"]:  # added since: caveats, none for this store (one set of versions, all folders)
        assert section.pop("notes") == []
        assert section.pop("baselines") == {}  # trivial baselines: runs stored before them have none
        assert section.pop("by_budget")["excluded"] == ["base", "lora", "ia3"]  # issue 16: no leader among them
        assert section.pop("bootstrap").startswith("No best: every cell is degenerate")
        for cell in section["cells"]:  # the tiny model's runs predict one class: flagged, unranked, never best
            assert [f["kind"] for f in cell.pop("flags")] == ["degenerate"]
            assert (cell.pop("rank"), cell.pop("mark"), cell.pop("near_best"), cell.pop("vs_best")) == (None, "-", False, None)
    want = json.loads((EXPECTED / "report.json").read_text())
    for section in want["sections"]:  # ranks and the bootstrap: checked above, as issue 16 changed them
        section.pop("bootstrap")
        for cell in section["cells"]:
            for key in ("rank", "mark", "near_best", "vs_best"):
                cell.pop(key)
    assert rep == want


def test_older_results_fill_in_from_the_config() -> None:
    """Results stored before they named metrics, select metric, lr or budget."""
    config = {"train": {"lr": 1e-3, "steps": 10}}
    r = RunResult.from_dict({"test": {"accuracy": 0.5, "macro_f1": 0.4}, "costs": {"train_flops": 7}}, config)
    assert r.metrics == ["accuracy", "macro_f1"] and r.select_metric == "macro_f1"
    assert r.lr == 1e-3 and r.budget.to_dict() == {"kind": "steps", "value": 10.0}
    assert r.costs.train_flops == 7 and r.costs.latency is None and r.costs.value("latency.b1_ms") is None
    assert r.test_score("macro_f1") == 0.4 and r.validation_score("macro_f1") is None and r.samples == []
