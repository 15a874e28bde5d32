"""The results store: skip finished configs, --force, killed runs, atomic finishes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.config import parse_config
from peftbench.runner import config_hash, normalize, run
from peftbench.store import Store
from conftest import wait_until_running

runner = CliRunner()


def cli(*args: str) -> object:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_config_hash_is_stable_and_sensitive(tiny_config: dict) -> None:
    a, _ = normalize(parse_config(tiny_config))
    b, _ = normalize(parse_config(json.loads(json.dumps(tiny_config))))
    assert config_hash(a) == config_hash(b)
    # Method defaults are filled in before hashing: spelling a default out changes nothing.
    explicit = {**tiny_config, "method": {"name": "lora", "params": {"r": 8}}}
    assert config_hash(normalize(parse_config(explicit))[0]) == config_hash(a)
    for change in ({"train": {**tiny_config["train"], "seed": 1}}, {"method": {"name": "lora", "params": {"r": 4}}}):
        assert config_hash(normalize(parse_config({**tiny_config, **change}))[0]) != config_hash(a)


def test_finished_config_is_skipped_and_force_reruns(tiny_config: dict, tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_config))
    res = tmp_path / "res"
    first = cli("run", "--config", str(cfg_file), "--results-dir", str(res), "--json")
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["skipped"] is False and doc["status"] == "done"

    again = cli("run", "--config", str(cfg_file), "--results-dir", str(res), "--json")
    assert json.loads(again.stdout)["skipped"] is True
    assert json.loads(again.stdout)["run_id"] == doc["run_id"]
    assert len(Store(res).list()) == 1

    forced = cli("run", "--config", str(cfg_file), "--results-dir", str(res), "--force", "--json")
    new = json.loads(forced.stdout)
    assert new["skipped"] is False and new["run_id"] != doc["run_id"]
    rows = {r.run_id: r for r in Store(res).list()}
    assert rows[doc["run_id"]].status == "superseded" and rows[new["run_id"]].status == "done"
    assert rows[doc["run_id"]].folder.is_dir(), "a finished result is never deleted"


def test_run_folder_holds_config_metrics_curve_and_adapter(tiny_config: dict, tmp_path: Path) -> None:
    out = run(parse_config(tiny_config), tmp_path)
    folder = out.row.folder
    assert json.loads((folder / "config.json").read_text())["method"]["name"] == "lora"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"accuracy", "macro_f1", "macro_precision", "macro_recall", "loss"}
    costs = metrics["costs"]
    assert costs["train_forward_flops"] > 0 and costs["train_backward_flops"] > 0 and costs["eval_flops"] > 0
    assert costs["adapter_bytes"] == sum(f.stat().st_size for f in (folder / "adapter").rglob("*") if f.is_file())
    assert costs["peak_memory_bytes"] > 0 and costs["tokens"] > 0 and costs["steps"] == 4
    curve = json.loads((folder / "curve.json").read_text())
    assert [p["step"] for p in curve] == [2, 4]
    assert curve[0]["train_flops"] < curve[1]["train_flops"] == costs["train_flops"]
    assert Store(tmp_path).curve(out.row.run_id)[1]["metrics"] == curve[1]["metrics"]
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob("runs/.tmp-*")), "no staging folder left behind"


def test_failed_run_is_marked_and_leaves_finished_runs_alone(tiny_config: dict, tmp_path: Path, monkeypatch) -> None:
    good = run(parse_config(tiny_config), tmp_path).row
    import peftbench.runner as r

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(r, "train", boom)
    other = {**tiny_config, "train": {**tiny_config["train"], "seed": 7}}
    with pytest.raises(RuntimeError):
        run(parse_config(other), tmp_path)
    rows = Store(tmp_path).list()
    assert [x.status for x in rows] == ["done", "failed"]
    assert "disk on fire" in rows[1].error
    assert Store(tmp_path).find_done(good.config_hash).run_id == good.run_id
    assert not list(tmp_path.glob("runs/.tmp-*"))


def test_killed_run_is_not_counted_as_done(tiny_config: dict, tmp_path: Path) -> None:
    long = {**tiny_config, "train": {**tiny_config["train"], "steps": 5000, "eval_every": 5000}}
    cfg_file = tmp_path / "long.yaml"
    cfg_file.write_text(yaml.safe_dump(long))
    res = tmp_path / "res"
    proc = subprocess.Popen(
        [sys.executable, "-m", "peftbench.cli", "run", "--config", str(cfg_file), "--results-dir", str(res)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        wait_until_running(res)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    store = Store(res)  # opening the store notices the dead process
    (row,) = store.list()
    assert row.status == "interrupted"
    digest = config_hash(normalize(parse_config(long))[0])
    assert store.find_done(digest) is None
    # Re-running the same config (shorter budget, so a new hash) works beside the wreck.
    done = run(parse_config(tiny_config), res)
    assert done.row.status == "done" and not done.skipped


def test_open_existing_refuses_a_folder_without_results_and_always_closes(tmp_path: Path) -> None:
    from peftbench.errors import UserError

    with pytest.raises(UserError, match="no results in"):
        with Store.open_existing(tmp_path / "nothing"):
            pass
    assert not (tmp_path / "nothing").exists(), "refusing creates nothing"
    Store(tmp_path).close()
    with Store.open_existing(tmp_path) as store:
        assert store.list() == []
    with pytest.raises(sqlite3.ProgrammingError):
        store.list()  # closed after use
    with pytest.raises(UserError):
        with Store.open_existing(tmp_path) as store:
            store.get("nosuchrun")
    with pytest.raises(sqlite3.ProgrammingError):
        store.list()  # ... and when the body raised
