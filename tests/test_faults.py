"""Faults of the machine and of stored files: one line, exit 2, nothing finished lost (issue 12 items 2, 5, 6).

Bugs (any other exception) print one line naming a log file and exit 1; --debug shows the traceback.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftbench.config import parse_config
from peftbench.runner import run
from peftbench.store import Store
from conftest import make_rows, write_jsonl
from test_bad_input import assert_refused, invoke


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, tiny_data: Path) -> tuple[Path, str, dict]:
    """A results folder holding one finished LoRA run: (folder, run id, its raw config)."""
    res = tmp_path_factory.mktemp("faults") / "res"
    cfg = {"model": {"name": tiny_model}, "method": {"name": "lora"},
           "task": {"kind": "classification", "data": {"source": str(tiny_data)}, "max_length": 32},
           "train": {"steps": 2, "batch_size": 8, "eval_batch_size": 16, "eval_every": 2}}
    row = run(parse_config(cfg), res).row
    return res, row.run_id, cfg


@pytest.fixture
def copy(done: tuple[Path, str, dict], tmp_path: Path) -> tuple[Path, str, dict]:
    res = tmp_path / "res"
    shutil.copytree(done[0], res)
    return res, done[1], done[2]


def cli_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def limited(args: list[str], max_bytes: int, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI with no file allowed to grow past max_bytes: writes fail as on a full disk (EFBIG)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run([sys.executable, "-m", "peftbench.cli", *args], capture_output=True, text=True,
                          env=cli_env(), cwd=cwd, preexec_fn=limit, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]  # after the run's progress lines
    assert len(lines) == 1 and proc.stderr.rstrip().endswith(lines[0]), proc.stderr
    assert all(w.lower() in lines[0].lower() for w in words), lines[0]
    return lines[0]


# -- a full disk -----------------------------------------------------------------------------


def test_reading_results_works_on_a_full_disk(copy: tuple[Path, str, dict], tmp_path: Path) -> None:
    res, run_id, _ = copy
    proc = limited(["results", "--results-dir", str(res), "--json"], 0, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [r["run_id"] for r in json.loads(proc.stdout)] == [run_id]


def test_training_on_a_full_disk_is_one_line_and_loses_nothing(copy: tuple[Path, str, dict], tmp_path: Path) -> None:
    res, run_id, cfg = copy
    (tmp_path / "new.yaml").write_text(yaml.safe_dump({**cfg, "train": {**cfg["train"], "seed": 7}}))
    # The index may grow a little; the adapter's weights (42 kB) may not.
    proc = limited(["run", "--config", str(tmp_path / "new.yaml"), "--results-dir", str(res)], 32768, tmp_path)
    one_error_line(proc, "file too large", "disk")
    with Store(res) as store:
        rows = {r.run_id: r.status for r in store.list()}
    assert rows.pop(run_id) == "done"  # the finished run is untouched
    # failed, or, when even that could not be written, interrupted (reaped as its process ended)
    assert list(rows.values()) in (["failed"], ["interrupted"])
    assert not list((res / "runs").glob(".tmp-*"))  # and nothing half-written is left


# -- the results folder ---------------------------------------------------------------------


@pytest.mark.parametrize("command", [["results"], ["report"], ["results", "show", "x"], ["export", "x", "out"],
                                     ["predict", "x", "some text"]])
def test_a_results_dir_that_is_a_file(command: list[str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert_refused(invoke(*command, "--results-dir", tmp_path / "file"), "is a file, not a folder")


def test_a_results_dir_that_cannot_be_written(tiny_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(tiny_config))
    real = Path.mkdir

    def refuse(self: Path, *a: object, **k: object) -> None:
        if "locked" in str(self):
            raise PermissionError(13, "Permission denied", str(self))
        real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refuse)  # as root, chmod cannot make a folder unwritable
    assert_refused(invoke("run", "--config", tmp_path / "run.yaml", "--results-dir", tmp_path / "locked"),
                   "permission denied", "locked", "check its permissions")


# -- stored files that are gone or hostile ------------------------------------------------


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_deleted_adapter_folder(command: str, copy: tuple[Path, str, dict], tmp_path: Path) -> None:
    res, run_id, _ = copy
    shutil.rmtree(res / "runs" / run_id / "adapter")
    args = ["some text"] if command == "predict" else [tmp_path / "out"]
    assert_refused(invoke(command, run_id, *args, "--results-dir", res), "adapter folder", "is missing", "--force")
    assert not (tmp_path / "out").exists()


class Boom:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_a_pickle_in_place_of_the_weights_is_refused_not_run(copy: tuple[Path, str, dict], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    res, run_id, _ = copy
    adapter = res / "runs" / run_id / "adapter"
    (adapter / "adapter_model.safetensors").unlink()
    with (adapter / "adapter_model.bin").open("wb") as f:
        pickle.dump({"w": Boom()}, f)
    monkeypatch.chdir(tmp_path)
    result = invoke("predict", run_id, "some text", "--results-dir", res)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert not (tmp_path / "pwned").exists()


def test_damaged_safetensors_are_one_line(copy: tuple[Path, str, dict]) -> None:
    res, run_id, _ = copy
    (res / "runs" / run_id / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
    assert_refused(invoke("predict", run_id, "some text", "--results-dir", res), "damaged")


# -- where output goes ----------------------------------------------------------------------


def test_export_leaves_other_folders_alone_and_refuses_dot(copy: tuple[Path, str, dict], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    res, run_id, _ = copy
    keep = tmp_path / "dest" / ".out.tmp"
    keep.mkdir(parents=True)
    (keep / "mine.txt").write_text("not peftbench's")
    assert invoke("export", run_id, tmp_path / "dest" / "out", "--results-dir", res).exit_code == 0
    assert (keep / "mine.txt").read_text() == "not peftbench's"
    assert (tmp_path / "dest" / "out" / "peftbench.json").is_file()
    assert [p.name for p in (tmp_path / "dest").iterdir() if p.name.startswith(".")] == [".out.tmp"]
    monkeypatch.chdir(tmp_path / "dest")
    assert_refused(invoke("export", run_id, ".", "--results-dir", res), "already exists")


def test_outputs_that_are_folders(copy: tuple[Path, str, dict], tmp_path: Path) -> None:
    res, run_id, _ = copy
    (tmp_path / "d").mkdir()
    assert_refused(invoke("report", "--results-dir", res, "--html", tmp_path / "d"), "is a directory", "pass a file path")
    assert_refused(invoke("predict", run_id, "sad day", "--out", tmp_path / "d", "--results-dir", res),
                   "is a directory", "pass a file path")


# -- user text is never rich markup ---------------------------------------------------------


def test_labels_and_paths_with_markup_print_as_text(tiny_model: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        rows = [{**r, "label": r["label"] + " [/x]"} for r in make_rows(24, seed)]
        write_jsonl(data / f"{split}.jsonl", rows)
    model = tmp_path / "m[" / "x]"  # the path reads '.../m[/x]'
    shutil.copytree(tiny_model, model)
    res = tmp_path / "res"
    ran = invoke("run", "--model", model, "--data", data, "--method", "lora", "--steps", "2", "--batch-size", "8",
                 "--results-dir", res)
    assert ran.exit_code == 0, ran.output
    (row,) = Store(res).list()
    shown = invoke("results", "show", row.run_id, "--results-dir", res)
    assert shown.exit_code == 0 and "[/x]" in shown.stdout, shown.output
    # The default max length (128) was lowered to this model's 64 positions; predict lowers it alike.
    predicted = invoke("predict", row.run_id, "sad cry lonely", "--results-dir", res)
    assert predicted.exit_code == 0 and "[/x]" in predicted.stdout, predicted.output
    assert invoke("report", "--results-dir", res).exit_code == 0
    bad = invoke("run", "--model", tmp_path / "no[/x]", "--data", data, "--results-dir", res)
    assert_refused(bad, "no[/x]")


# -- bugs -------------------------------------------------------------------------------------


def test_an_internal_bug_names_its_log_and_exits_1(copy: tuple[Path, str, dict], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    res, _, _ = copy
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def broken(*a: object, **k: object) -> None:
        raise ValueError("a peftbench bug")

    monkeypatch.setattr("peftbench.report.tables.runs_table", broken)
    result = invoke("results", "--results-dir", res)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert "internal error (ValueError: a peftbench bug)" in line and "--debug" in line
    (log,) = (tmp_path / "cache" / "peftbench" / "logs").glob("crash-*.log")
    assert str(log) in line and "Traceback" in log.read_text() and "a peftbench bug" in log.read_text()

    debug = invoke("--debug", "results", "--results-dir", res)
    assert debug.exit_code == 1 and isinstance(debug.exception, ValueError)  # the traceback is the user's to see


# -- what a report must say ------------------------------------------------------------------


def test_report_notes_other_versions_and_deleted_folders(copy: tuple[Path, str, dict], tmp_path: Path) -> None:
    res, run_id, cfg = copy
    second = run(parse_config({**cfg, "train": {**cfg["train"], "seed": 1}}), res).row
    with Store(res) as store:  # as if the second seed had run under an older torch
        result = {**second.result, "versions": {**second.result["versions"], "torch": "2.12.1"}}
        store.db.execute("UPDATE runs SET result=? WHERE run_id=?", (json.dumps(result), second.run_id))
    shutil.rmtree(res / "runs" / run_id)
    md, html = tmp_path / "r.md", tmp_path / "r.html"
    shown = invoke("report", "--results-dir", res, "--markdown", md, "--html", html)
    assert shown.exit_code == 0, shown.output
    for text in (" ".join(shown.stdout.split()), md.read_text(), html.read_text()):
        assert "across torch versions: 2.12.1 (1 run), 2.13" in text
        assert f"1 run folder(s) deleted ({run_id})" in text


def test_a_full_disk_with_a_pending_log_is_not_called_damage(copy: tuple[Path, str, dict], tmp_path: Path) -> None:
    """An index whose newest pages are still in its -wal (a writer died) cannot be read from the main
    file alone; on a full disk that is a disk problem, not damage, and no rebuild is offered."""
    import sqlite3

    res, run_id, _ = copy
    db = sqlite3.connect(res / "results.sqlite", isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("UPDATE runs SET error='touched' WHERE run_id=?", (run_id,))  # a page only the -wal holds
    frozen = tmp_path / "frozen"
    shutil.copytree(res, frozen)  # as a killed writer leaves it: -wal with pages, -shm
    db.close()
    os.remove(frozen / "results.sqlite-shm")
    assert (frozen / "results.sqlite-wal").stat().st_size > 0
    proc = limited(["results", "--results-dir", str(frozen), "--json"], 0, tmp_path)
    # Not a stale snapshot of the main file (it misses the logged pages), not "damaged": a disk problem.
    line = one_error_line(proc, "disk may be full")
    assert "rebuild" not in line and "malformed" not in line
