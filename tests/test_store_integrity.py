"""A damaged index never hides finished runs; `results --rebuild` brings every one back (issue 12 items 3, 4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from peftbench.config import parse_config
from peftbench.runner import run
from peftbench.store import Store
from conftest import wait_until_running
from test_bad_input import assert_refused, invoke


def snapshot(res: Path) -> dict[str, Any]:
    with Store(res) as store:
        return {r.run_id: (r.status, r.config_hash, r.config, r.result, r.finished, store.curve(r.run_id))
                for r in store.list()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, tiny_data: Path) -> tuple[Path, dict]:
    """Three finished runs: two seeds, and one seed forced again (so one is superseded)."""
    res = tmp_path_factory.mktemp("store") / "res"
    base = {"model": {"name": tiny_model}, "method": {"name": "lora"},
            "task": {"kind": "classification", "data": {"source": str(tiny_data)}, "max_length": 32},
            "train": {"steps": 2, "batch_size": 8, "eval_batch_size": 16, "eval_every": 2}}
    for seed, force in ((0, False), (1, False), (0, True)):
        run(parse_config({**base, "train": {**base["train"], "seed": seed}}), res, force=force)
    snap = snapshot(res)
    assert sorted(s[0] for s in snap.values()) == ["done", "done", "superseded"]
    return res, snap


def zero(db: Path) -> None:
    db.write_bytes(b"")


def truncate(db: Path) -> None:
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])


def garble_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[:100] = os.urandom(100)
    db.write_bytes(bytes(data))


def garble_pages(db: Path) -> None:
    data = bytearray(db.read_bytes())
    for start in range(4096, len(data), 4096):  # every page after the first: the tables' b-trees
        data[start:start + 64] = b"\xff" * 64
    db.write_bytes(bytes(data))


def delete(db: Path) -> None:
    db.unlink()


@pytest.mark.parametrize("damage", [zero, truncate, garble_header, garble_pages, delete])
def test_a_damaged_index_is_refused_then_rebuilt_with_every_finished_run(
        damage: Callable[[Path], None], finished: tuple[Path, dict], tmp_path: Path) -> None:
    src, before = finished
    res = tmp_path / "res"
    shutil.copytree(src, res)
    db = res / "results.sqlite"
    damage(db)
    damaged = db.read_bytes() if db.exists() else None

    for command in (("results",), ("report",), ("results", "show", next(iter(before)))):
        line = assert_refused(invoke(*command, "--results-dir", res), "results index", "peftbench results --rebuild")
        assert "3 finished run folder(s) are safe" in line
    assert (db.read_bytes() if db.exists() else None) == damaged  # never silently replaced

    done = invoke("results", "--rebuild", "--results-dir", res, "--json")
    assert done.exit_code == 0, done.output
    assert "3 finished run(s) restored" in done.stderr
    assert {r["run_id"] for r in json.loads(done.stdout)} == set(before)
    assert snapshot(res) == before  # identical config, hash, status, metrics, times and curve
    kept = list(res.glob("results.sqlite.damaged-*"))
    if damaged is None:
        assert not kept
    else:
        assert [p.read_bytes() for p in kept if not p.name.endswith(("-wal", "-shm"))] == [damaged]


def test_rebuilding_a_sound_index_adds_only_the_missing_folders(finished: tuple[Path, dict], tmp_path: Path) -> None:
    src, before = finished
    res = tmp_path / "res"
    shutil.copytree(src, res)
    lost = sorted(before)[0]
    with Store(res) as store:
        store.db.execute("DELETE FROM runs WHERE run_id=?", (lost,))
        store.db.execute("DELETE FROM evals WHERE run_id=?", (lost,))
    done = invoke("results", "--rebuild", "--results-dir", res)
    assert done.exit_code == 0 and "1 finished run(s) restored" in done.stderr, done.output
    assert not list(res.glob("results.sqlite.damaged-*"))  # nothing set aside: the index was sound
    assert snapshot(res) == before


def test_an_unreadable_run_folder_is_skipped_and_named(finished: tuple[Path, dict], tmp_path: Path) -> None:
    src, before = finished
    res = tmp_path / "res"
    shutil.copytree(src, res)
    broken = sorted(before)[1]
    (res / "runs" / broken / "curve.json").write_text("{not json")
    (res / "results.sqlite").write_bytes(b"")
    done = invoke("results", "--rebuild", "--results-dir", res)
    assert done.exit_code == 0, done.output
    assert f"skipped unreadable run folder {broken}" in done.stderr
    assert set(snapshot(res)) == set(before) - {broken}


def test_folders_of_older_versions_without_run_json_get_their_original_hash(
        finished: tuple[Path, dict], tmp_path: Path) -> None:
    src, before = finished
    res = tmp_path / "res"
    shutil.copytree(src, res)
    for meta in res.glob("runs/*/run.json"):
        meta.unlink()
    delete(res / "results.sqlite")
    assert invoke("results", "--rebuild", "--results-dir", res).exit_code == 0
    after = snapshot(res)
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in before.items()}
    assert {k: v[3] for k, v in after.items()} == {k: v[3] for k, v in before.items()}


def test_an_empty_index_with_no_run_folders_is_just_a_new_store(tmp_path: Path) -> None:
    (tmp_path / "results.sqlite").write_bytes(b"")
    with Store(tmp_path) as store:
        assert store.list() == []


def test_rebuild_without_run_folders_is_refused(tmp_path: Path) -> None:
    assert_refused(invoke("results", "--rebuild", "--results-dir", tmp_path / "nothing"), "no run folders")


# -- leftovers and single flight (item 4) ---------------------------------------------------


def test_staging_folders_of_dead_runs_are_removed_on_open(finished: tuple[Path, dict], tmp_path: Path) -> None:
    src, _ = finished
    res = tmp_path / "res"
    shutil.copytree(src, res)
    with Store(res) as store:
        store.db.execute("INSERT INTO runs(run_id, config_hash, status, pid, host) VALUES ('dead-1', 'h', 'running', ?, ?)",
                         (2**22 + 12345, os.uname().nodename))
        alive = store.begin("livehash", {}, "lora", "m", "t")
        (res / "runs" / ".tmp-dead-1" / "adapter").mkdir(parents=True)
        (res / "runs" / ".tmp-orphan").mkdir()
        store.staging(alive)
    with Store(res) as store:
        assert not (res / "runs" / ".tmp-dead-1").exists() and not (res / "runs" / ".tmp-orphan").exists()
        assert (res / "runs" / f".tmp-{alive}").is_dir()  # this process is alive: its run is left alone
        assert {r.run_id: r.status for r in store.list()}["dead-1"] == "interrupted"


def test_begin_refuses_a_config_a_live_process_is_training(tmp_path: Path) -> None:
    from peftbench.errors import UserError

    with Store(tmp_path) as store:
        first = store.begin("samehash", {}, "lora", "m", "t")
        with pytest.raises(UserError, match=f"already training as run {first}"):
            store.begin("samehash", {}, "lora", "m", "t")
        store.fail(first, "failed", "x")
        store.begin("samehash", {}, "lora", "m", "t")  # once it has ended, the config may run again


def test_the_same_config_started_twice_trains_once(tiny_config: dict, tmp_path: Path) -> None:
    train = {k: v for k, v in tiny_config["train"].items() if k not in ("steps", "eval_every")}
    cfg = {**tiny_config, "train": {**train, "seconds": 15}}  # long enough for the second to start meanwhile
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "peftbench.cli", "run", "--config", str(tmp_path / "run.yaml"),
           "--results-dir", str(res), "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    go = tmp_path / "go"  # the second imports everything first, then starts once the first trains: on a loaded
    # machine its start-up alone could outlast the first's training
    warm = ("import sys, time, pathlib, peftbench.runner, peftbench.cli as cli\n"
            f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)\n"
            "sys.argv = ['peftbench', *sys.argv[1:]]; cli.main()")
    second = subprocess.Popen([sys.executable, "-c", warm, *cmd[3:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_until_running(res)
    go.touch()
    out_second, err_second = second.communicate(timeout=300)
    second = subprocess.CompletedProcess(second.args, second.returncode, out_second, err_second)
    out_first, _ = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    a, b = json.loads(out_first), json.loads(second.stdout)
    assert b["skipped"] is True and b["run_id"] == a["run_id"]  # the second waited, then reused the result
    assert "waiting for run" in second.stderr
    with Store(res) as store:
        assert [r.status for r in store.list()] == ["done"]


def test_waiting_ends_when_the_other_process_does(tmp_path: Path) -> None:
    from peftbench.runner import wait_for_same_config

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    said: list[str] = []
    with Store(tmp_path) as store:
        store.db.execute("INSERT INTO runs(run_id, config_hash, status, pid, host) VALUES ('r-1', 'h', 'running', ?, ?)",
                         (other.pid, os.uname().nodename))
        t0 = time.time()
        reaper = __import__("threading").Thread(target=other.wait)  # reap the child so its pid is really gone
        reaper.start()
        wait_for_same_config(store, "h", said.append, poll=0.1)
        assert time.time() - t0 > 1 and said == [f"waiting for run r-1 (pid {other.pid}), which is training the same config"]
        assert store.get("r-1").status == "interrupted"
        reaper.join()
