"""--report-to: each backend writes local files that its own reader reads back; nothing goes online."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from peftbench.errors import UserError
from peftbench.track import Tee, check_trackers, open_trackers, parse_kinds, tracking_uri
from peftbench.train.loop import EvalPoint, Quiet

CONFIG = {"model": {"name": "tiny"}, "method": {"name": "lora", "params": {"r": 8, "target_modules": ["query"]}},
          "train": {"lr": 0.001, "steps": 4, "select_metric": None}}
POINTS = [EvalPoint(2, 100, 1000, 0.5, 1.2, {"accuracy": 0.4, "macro_f1": 0.3, "loss": 1.1}),
          EvalPoint(4, 200, 2000, 1.0, 0.9, {"accuracy": 0.6, "macro_f1": 0.5, "loss": 0.8})]
RESULT = {"test": {"accuracy": 0.55, "macro_f1": 0.45}, "validation": POINTS[1].metrics, "best_step": 4,
          "costs": {"train_flops": 2000, "steps": 4, "peak_memory_kind": "cpu-rss", "latency": {"b1_ms": 3.5}}}


def feed(kinds: list[str], root: Path, name: str = "lora-run1") -> None:
    with open_trackers(kinds, root, name, CONFIG) as tracker:
        reporter = Tee(Quiet(), tracker)
        reporter.start(4)
        for p in POINTS:
            reporter.step(p.step)
            reporter.evaluating("validation", 1, 1)
            reporter.evaluated(p)
        tracker.finish(RESULT)


def test_tensorboard_event_file_reads_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    feed(["tensorboard"], tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "lora-run1"))
    acc.Reload()
    f1 = acc.Scalars("validation/macro_f1")
    assert [e.step for e in f1] == [2, 4] and [round(e.value, 4) for e in f1] == [0.3, 0.5]
    assert [e.value for e in acc.Scalars("train_loss")] == pytest.approx([1.2, 0.9])
    assert acc.Scalars("test/macro_f1")[0].value == pytest.approx(0.45)
    assert acc.Scalars("costs/latency/b1_ms")[0].value == pytest.approx(3.5)


def test_mlflow_local_store_reads_back(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    feed(["mlflow"], tmp_path)
    with pytest.raises(RuntimeError), open_trackers(["mlflow"], tmp_path, "broken", CONFIG):
        raise RuntimeError("training failed")
    client = MlflowClient(tracking_uri=tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("peftbench")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    run = runs["lora-run1"]
    assert run.info.status == "FINISHED" and runs["broken"].info.status == "FAILED"
    assert run.data.params["method.name"] == "lora" and run.data.params["method.params.target_modules"] == '["query"]'
    history = client.get_metric_history(run.info.run_id, "validation/macro_f1")
    assert sorted((m.step, m.value) for m in history) == [(2, 0.3), (4, 0.5)]
    assert run.data.metrics["test/macro_f1"] == pytest.approx(0.45) and run.data.metrics["costs/train_flops"] == 2000


def test_wandb_offline_run_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    feed(["wandb"], tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_kinds_are_checked_before_anything_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_kinds("mlflow, TensorBoard,mlflow") == ["mlflow", "tensorboard"] and parse_kinds(None) == []
    assert parse_kinds(["wandb", "mlflow,tensorboard"]) == ["wandb", "mlflow", "tensorboard"]
    with pytest.raises(UserError, match=r"unknown --report-to 'mlfow' \(did you mean 'mlflow'\?\); known: mlflow, tensorboard, wandb"):
        open_trackers(["mlfow"], tmp_path / "r", "x", CONFIG)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError) as e:
        check_trackers(["tensorboard", "mlflow"])
    assert str(e.value) == "--report-to mlflow needs MLflow: pip install 'peftbench[track]'"
    assert not (tmp_path / "r").exists()
    with open_trackers([], tmp_path, "x", CONFIG) as none:  # no kinds: a reporter that does nothing
        none.evaluated(POINTS[0])
        none.finish(RESULT)


def test_cli_run_reports_to_tensorboard_and_refuses_unknown(tiny_model, tiny_data, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from typer.testing import CliRunner

    from peftbench.cli import app
    from peftbench.store import Store

    args = ["run", "--model", tiny_model, "--data", str(tiny_data), "--steps", "4", "--eval-every", "2",
            "--batch-size", "8", "--max-length", "32", "--results-dir", str(tmp_path)]
    bad = CliRunner().invoke(app, [*args, "--report-to", "tensorbored"])
    assert bad.exit_code == 2 and "tensorbored" in bad.stderr and not (tmp_path / "results.sqlite").exists()
    res = CliRunner().invoke(app, [*args, "--report-to", "tensorboard"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (row,) = Store(tmp_path).list()
    logdir = tmp_path / "tensorboard" / f"lora-{row.run_id}"
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert [e.step for e in acc.Scalars("validation/macro_f1")] == [2, 4]
    assert any(t.startswith("test/") for t in acc.Tags()["scalars"])
