"""A cluster sweep's two halves without a cluster: the worker's task (sweep/remote.work) trains in a
folder of its own and ships its run as bytes; the driver imports it (Store.import_run) atomically,
once per config hash, with a local run's failure records. Inputs too large to ship are refused."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peftbench.config import parse_config
from peftbench.errors import UserError
from peftbench.runner import config_hash, normalize, stored_config, versions
from peftbench.store import Store
from peftbench.sweep import remote, ship
from peftbench.sweep.local import Outcome
from peftbench.sweep.progress import SweepProgress
from peftbench.sweep.ray_backend import store_returned
from peftbench.train import threads

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def raw(tiny_config: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    monkeypatch.setitem(threads._state, "fixed", threads._state.get("fixed"))  # work() fixes 1 thread: undone after
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node"))  # the "node's" temp folder
    (tmp_path / "node").mkdir()
    return {**tiny_config, "measure": {"latency": False}, "task": {**tiny_config["task"], "samples": 2}}


def identity(raw: dict) -> tuple[str, dict]:
    cfg, _ = normalize(parse_config(raw))
    return config_hash(cfg), stored_config(cfg)


def on_worker(raw: dict, keep: str = "all") -> remote.Returned:
    cfg, _ = normalize(parse_config(raw))
    return remote.work(0, cfg.model_dump(mode="json"), {}, keep, None, None)


def test_shipped_run_is_stored_once_under_the_drivers_hash_with_a_working_adapter(raw: dict, tmp_path: Path) -> None:
    from peftbench.predict import predict

    back = on_worker(raw)
    assert back.outcome.status == "done" and back.shipped.status == "done" and back.outcome.node
    assert back.outcome.run_id is None, "the worker's run id is its own; the driver gives one"
    assert not list((tmp_path / "node" / "peftbench-ray").glob("task-*")), "the task's folder is removed"
    names = tarfile.open(fileobj=BytesIO(back.shipped.folder)).getnames()
    assert "adapter" in names and "metrics.json" in names
    digest, config = identity(raw)
    with Store(tmp_path / "res") as store:
        out = store_returned(store, (digest, config), back, force=False)
        assert out.status == "done" and out.run_id
        row = store.get(out.run_id)
        assert row.done and row.config_hash == digest and row.config == config
        assert json.loads((row.folder / "metrics.json").read_text()) == row.result
        assert json.loads((row.folder / "run.json").read_text())["config_hash"] == digest
        assert json.loads((row.folder / "curve.json").read_text()) == store.curve(row.run_id) != []
        assert store.predictions(row.run_id) is not None and row.run_result.samples
        assert "weights" not in row.result, "nothing dropped, nothing recorded"
        assert predict(row, [{"text": "happy sunny fun"}, {"text": "sad tears"}])[0] in {"joy", "anger", "sadness"}

        again = store_returned(store, (digest, config), back, force=False)  # e.g. a retried task's second answer
        assert again.status == "skipped" and again.run_id == row.run_id
        assert [r.status for r in store.list()] == ["done"]
        forced = store_returned(store, (digest, config), back, force=True)
        assert sorted(r.status for r in store.list()) == ["done", "superseded"] and forced.run_id != row.run_id
    assert not list((tmp_path / "res" / "runs").glob(".tmp-*"))


IMPORT_THEN_DIE = """
import os, pickle, sys
from peftbench.store import Store, sqlite
back, digest, config = pickle.load(open(sys.argv[1], "rb"))
def die(self, run_id, output, staged):  # the driver is killed with the run staged, before it is finished
    assert (staged / "adapter").is_dir()
    os._exit(9)
sqlite.Store.finish = die
Store(sys.argv[2]).import_run(digest, config, back.shipped)
"""


def test_driver_killed_mid_import_loses_only_that_run_and_a_rerun_stores_it(raw: dict, tmp_path: Path) -> None:
    back = on_worker(raw)
    digest, config = identity(raw)
    blob = tmp_path / "back.pkl"
    blob.write_bytes(pickle.dumps((back, digest, config)))
    res = tmp_path / "res"
    src = str(Path(__file__).parents[1] / "src")
    proc = subprocess.run([sys.executable, "-c", IMPORT_THEN_DIE, str(blob), str(res)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 9, proc.stderr
    with Store(res) as store:  # opening reaps the dead driver's row and its staging folder
        assert [(r.status, r.error) for r in store.list()] == [("interrupted", "process ended before the run finished")]
        assert store.find_done(digest) is None
        assert not [p for p in (res / "runs").iterdir()], "no half-written run folder, no staging folder"
        out = store_returned(store, (digest, config), back, force=False)  # the rerun resumes by config hash
        assert out.status == "done" and store.find_done(digest).run_id == out.run_id
        assert sorted(r.status for r in store.list()) == ["done", "interrupted"]


def test_failures_come_back_as_the_records_a_local_run_stores(raw: dict, tmp_path: Path, monkeypatch) -> None:
    from peftbench import runner

    digest, config = identity(raw)
    real_train = runner.train

    def crash(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(runner, "train", crash)
    back = on_worker(raw)
    assert back.outcome.status == "failed" and back.shipped.status == "failed"
    with pytest.raises(RuntimeError):
        runner.run(parse_config(raw), tmp_path / "local")
    local = Store(tmp_path / "local").list()[0]
    with Store(tmp_path / "res") as store:
        store_returned(store, (digest, config), back, force=False)
        (row,) = store.list()
        assert (row.status, row.error, row.config_hash) == (local.status, local.error, local.config_hash) == (
            "failed", "RuntimeError: simulated crash", digest)
        assert not row.folder.exists()
    monkeypatch.setattr(runner, "train", real_train)

    bad = on_worker({**raw, "task": {**raw["task"], "data": {"source": str(tmp_path / "missing")}}})
    assert bad.outcome.status == "failed" and bad.shipped is None, "bad input is refused before anything is stored"
    assert "missing" in bad.outcome.error

    good = on_worker(raw)
    good.versions = {**versions(), "torch": "1.0.0"}
    with Store(tmp_path / "res2") as store:
        out = store_returned(store, (digest, config), good, force=False)
        assert out.status == "failed" and "install the same peftbench, torch" in out.error and "torch 1.0.0" in out.error
        assert [r.status for r in store.list()] == ["failed"]


def test_keep_weights_adapters_leaves_full_weights_behind_and_records_it(raw: dict, tmp_path: Path) -> None:
    from peftbench.predict import predict

    full = {**raw, "method": {"name": "full"}}
    back = on_worker(full, keep="adapters")
    assert back.shipped.weights == "dropped"
    assert "adapter" not in tarfile.open(fileobj=BytesIO(back.shipped.folder)).getnames()
    with Store(tmp_path / "res") as store:
        row = store.get(store_returned(store, identity(full), back, force=False).run_id)
    assert row.done and row.result["weights"] == "dropped" and not row.adapter.exists()
    with pytest.raises(UserError, match="kept no weights"):
        predict(row, [{"text": "happy"}])


# -- inputs ------------------------------------------------------------------------------
def test_local_inputs_found_rewritten_and_refused_when_too_large(tiny_config: dict, tmp_path: Path) -> None:
    data = tiny_config["task"]["data"]["source"]
    configs = [tiny_config,
               {"model": {"name": "default"}, "task": {"data": {"source": "builtin:tweet_eval_emotion"}}},
               {"model": {"name": "org/hub-model"}, "task": {"data": {"source": data, "train_file": "nope.csv"}}}]
    paths = ship.local_paths(configs)
    assert paths == [tiny_config["model"]["name"], data], "built-in names, hub ids and missing paths stay as they are"
    copies = {p: f"/node/{i}" for i, p in enumerate(paths)}
    out = ship.rewrite(tiny_config, copies)
    assert out["model"]["name"] == "/node/0" and out["task"]["data"]["source"] == "/node/1"
    assert tiny_config["model"]["name"] == paths[0], "the driver's config is left alone"
    ship.check_size(paths)  # tiny: fine
    with pytest.raises(UserError) as e:
        ship.check_size(paths, limit=1000)
    msg = str(e.value)
    assert "\n" not in msg and "storage every node can read" in msg and "--shared-inputs" in msg


def test_cli_refuses_too_large_inputs_and_ray_flags_without_ray(tiny_config: dict, tmp_path: Path, monkeypatch) -> None:
    from peftbench.cli import app

    pytest.importorskip("ray")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": {**tiny_config, "measure": {"latency": False}}}))
    monkeypatch.setattr(ship, "SHIP_LIMIT", 1000)
    res = CliRunner().invoke(app, ["sweep", str(path), "--backend", "ray", "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--shared-inputs" in res.output and "Traceback" not in res.output, res.output
    assert len([s for s in res.output.splitlines() if "MiB" in s]) == 1
    for flags in (["--keep-weights", "adapters"], ["--shared-inputs"]):
        res = CliRunner().invoke(app, ["sweep", str(path), *flags, "--results-dir", str(tmp_path / "r")])
        assert res.exit_code == 2 and "--backend ray" in res.output, res.output
    res = CliRunner().invoke(app, ["sweep", str(path), "--backend", "ray", "--keep-weights", "some",
                                   "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "use all" in res.output
    assert not (tmp_path / "r" / "results.sqlite").exists()


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(["m", "d", "t", "x"]), st.text(min_size=1, max_size=5), max_size=4))
def test_rewrite_touches_only_shipped_path_keys(copies: dict) -> None:
    config = {"model": {"name": "m", "revision": "m"}, "task": {"data": {"source": "d", "train_file": "t",
                                                                         "text_column": "d"}}, "note": "x"}
    out = ship.rewrite(config, copies)
    assert out["model"]["name"] == copies.get("m", "m") and out["task"]["data"]["source"] == copies.get("d", "d")
    assert out["task"]["data"]["train_file"] == copies.get("t", "t")
    assert (out["model"]["revision"], out["task"]["data"]["text_column"], out["note"]) == ("m", "d", "x")


# -- progress ----------------------------------------------------------------------------
def test_progress_line_per_run_with_eta_from_measured_flops(tiny_config: dict) -> None:
    cfgs = {i: normalize(parse_config({**tiny_config, "train": {**tiny_config["train"], "seed": i}}))[0] for i in range(4)}
    progress = SweepProgress(cfgs, slots=2)
    first = progress.finished(Outcome(0, "done", "r0", seconds=2.0, flops=1e9, train_seconds=1.0, node="h/abc"))
    assert first.startswith("progress: 1/4 runs (last h/abc: 2.0 s)")
    # 3 runs left of 1e9 FLOPs at 1e9 FLOP/s plus 1 s overhead each, 2 at once: 3 s
    assert "ETA ~3 s" in first and "3e+09 FLOPs left at a measured 1e+09 FLOP/s" in first, first
    assert "failed" in progress.finished(Outcome(1, "failed", error="x"))
    progress.finished(Outcome(2, "skipped", "r2"))
    assert progress.finished(Outcome(3, "done", "r3", seconds=2.0, flops=1e9, train_seconds=1.0)).endswith("all done")


def test_tracker_logs_written_on_the_worker_come_back_to_the_results_folder(raw: dict, tmp_path: Path) -> None:
    cfg, _ = normalize(parse_config(raw))
    back = remote.work(0, cfg.model_dump(mode="json"), {}, "all", None, ["tensorboard"])
    assert back.trackers is not None
    with Store(tmp_path / "res") as store:
        assert store_returned(store, identity(raw), back, force=False).status == "done"
    events = list((tmp_path / "res" / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_shared_inputs_resolve_from_the_drivers_folder_on_the_worker(raw: dict, tmp_path: Path, monkeypatch) -> None:
    import shutil

    driver = tmp_path / "driver"
    shutil.copytree(raw["model"]["name"], driver / "model")
    shutil.copytree(raw["task"]["data"]["source"], driver / "data")
    rel = {**raw, "model": {"name": "./model"}, "task": {**raw["task"], "data": {"source": "./data"}}}
    monkeypatch.chdir(driver)
    cfg = normalize(parse_config(rel))[0].model_dump(mode="json")  # the driver expands the sweep in its folder
    monkeypatch.chdir(tmp_path)  # the worker starts elsewhere; with --shared-inputs nothing is shipped
    assert remote.work(0, cfg, {}, "all", None, None).outcome.status == "failed", "relative paths need a folder"
    back = remote.work(0, cfg, {}, "all", str(driver), None)
    assert back.outcome.status == "done" and back.shipped.status == "done" and Path.cwd() == tmp_path


def test_pack_ships_what_links_point_to_and_unpack_stays_inside(tmp_path: Path) -> None:
    from peftbench.store.shipped import pack, unpack

    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "abc").write_text("weights")
    snap = tmp_path / "snapshot"
    snap.mkdir()
    (snap / "model.safetensors").symlink_to(tmp_path / "blobs" / "abc")  # as a hub cache lays a model out
    unpack(pack(snap), tmp_path / "copy")
    copied = tmp_path / "copy" / "model.safetensors"
    assert copied.read_text() == "weights" and not copied.is_symlink()
    evil = BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, BytesIO(b"x"))
    with pytest.raises(tarfile.TarError):
        unpack(evil.getvalue(), tmp_path / "dest")
    assert not (tmp_path / "escaped").exists()


def test_a_run_that_cannot_be_stored_fails_that_config_only(tmp_path: Path) -> None:
    from peftbench.store.shipped import Shipped

    config = {"method": {"name": "lora"}, "model": {"name": "m"}, "task": {"kind": "classification"}}
    back = remote.Returned(Outcome(0, "done", seconds=1.0), Shipped("done", b"not a tar"), versions())
    with Store(tmp_path / "res") as store:
        out = store_returned(store, ("h" * 16, config), back, force=False)
        assert out.status == "failed" and "ReadError" in out.error
        (row,) = store.list()
        assert row.status == "failed" and row.error.startswith("the shipped run could not be stored")
    assert not list((tmp_path / "res" / "runs").iterdir()), "its staging folder is gone"
