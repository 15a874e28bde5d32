"""SQLite results store with atomic finishes.

A run row is written `running` when training starts and becomes `done` in the same
transaction that records its evaluation curve, after its folder was renamed into place.
A killed run stays `running` until a later open finds its process gone and marks it
`interrupted`; it is never counted as done. `--force` adds a new run; only when it
finishes are older done runs of the same config marked `superseded` (kept, not deleted).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from peftbench.errors import UserError
from peftbench.store import folder as run_folder
from peftbench.store import integrity
from peftbench.store.result import Curve, Predictions, RunOutput, RunResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, config_hash TEXT NOT NULL, status TEXT NOT NULL,
  method TEXT, model TEXT, task TEXT, created REAL, finished REAL,
  pid INTEGER, host TEXT, config TEXT, result TEXT, error TEXT
);
CREATE INDEX IF NOT EXISTS runs_hash ON runs(config_hash, status);
CREATE TABLE IF NOT EXISTS evals (
  run_id TEXT NOT NULL, step INTEGER, tokens INTEGER, train_flops INTEGER,
  seconds REAL, train_loss REAL, metrics TEXT
);
CREATE INDEX IF NOT EXISTS evals_run ON evals(run_id);
"""


@dataclass
class RunRow:
    run_id: str
    config_hash: str
    status: str
    method: str
    model: str
    task: str
    created: float
    finished: float | None
    config: dict[str, Any]
    result: dict[str, Any] | None  # as stored (what --json prints); read it typed as run_result
    error: str | None
    folder: Path

    @property
    def done(self) -> bool:
        return self.status == "done"

    @cached_property
    def run_result(self) -> RunResult | None:
        """The stored result, typed (None until the run is done)."""
        return RunResult.from_dict(self.result, self.config) if self.result is not None else None

    @property
    def adapter(self) -> Path:
        """The folder the method saved its weights to."""
        return self.folder / run_folder.ADAPTER

    # The config's parts that runs are grouped by; configs of older versions may lack a part.
    @property
    def seed(self) -> int | None:
        return self.config.get("train", {}).get("seed")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.config.get("method", {}).get("params", {}))

    @property
    def data(self) -> str:
        """The data the run used, as a name: its train file, or its source (and subset)."""
        data = self.config.get("task", {}).get("data", {})
        if data.get("train_file"):
            return str(data["train_file"])
        source = str(data.get("source", "?"))
        return f"{source}/{data['subset']}" if data.get("subset") else source

    @property
    def section(self) -> tuple[str, str, str]:
        """What makes runs comparable at all: task kind, data, model."""
        return (self.config.get("task", {}).get("kind", self.task), self.data,
                self.config.get("model", {}).get("name", self.model))

    @property
    def validation_only(self) -> bool:
        """A learning-rate search run: configured without test, or stored without test scores."""
        return self.config.get("train", {}).get("test") is False or not (self.run_result and self.run_result.scored_on_test)


def pid_alive(pid: int) -> bool:
    """A process with this pid exists (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, root: str | Path, check: bool = True, read_only: bool = False) -> None:
        """check: refuse an index that is damaged, or empty next to run folders (integrity.check).
        read_only: for commands that only read; they still work where nothing can be written (a full
        disk, a read-only folder), from an immutable snapshot of the index."""
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"results folder '{root}' is a file, not a folder: pass a folder with --results-dir")
        self.runs_dir = self.root / "runs"
        if not read_only:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        if check:
            integrity.check(self.root)
        try:
            self.db = sqlite3.connect(self.root / integrity.INDEX, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
            self._reap()
        except (sqlite3.OperationalError, OSError):
            if not read_only or not integrity.snapshot_readable(self.root / integrity.INDEX):
                raise
            self.db = sqlite3.connect(f"file:{self.root / integrity.INDEX}?mode=ro&immutable=1", uri=True,
                                      isolation_level=None)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    @contextmanager
    def open_existing(cls, root: str | Path) -> Iterator[Store]:
        """The store in an existing results folder (refused in one line if there is none), closed after use."""
        root = Path(root)
        nothing = root.is_dir() and not (root / integrity.INDEX).exists() and not integrity.run_folders(root / "runs")
        if nothing or not root.exists():  # a file gets Store's own line
            raise UserError(f"no results in '{root}' yet; run: peftbench compare (or pass --results-dir)")
        with cls(root, read_only=True) as store:
            yield store

    def _reap(self) -> None:
        """Mark runs whose process died (kill -9, power loss) as interrupted."""
        host = socket.gethostname()
        rows = self.db.execute("SELECT run_id, pid FROM runs WHERE status='running' AND host=?", (host,)).fetchall()
        for run_id, pid in rows:
            if pid != os.getpid() and not pid_alive(pid):
                self.db.execute(
                    "UPDATE runs SET status='interrupted', error='process ended before the run finished' "
                    "WHERE run_id=? AND status='running'", (run_id,)
                )
        # Staging folders of runs that are no longer running (killed, or failed before cleaning up).
        live = {r[0] for r in self.db.execute("SELECT run_id FROM runs WHERE status='running'").fetchall()}
        for staged in self.runs_dir.glob(".tmp-*"):
            if staged.name.removeprefix(".tmp-") not in live:
                shutil.rmtree(staged, ignore_errors=True)

    def running(self, config_hash: str) -> tuple[str, int, str] | None:
        """(run id, pid, host) of the run of this config a live process is training now, if any;
        a run on another host counts as live (its process cannot be seen from here)."""
        self._reap()
        r = self.db.execute("SELECT run_id, pid, host FROM runs WHERE config_hash=? AND status='running' LIMIT 1",
                            (config_hash,)).fetchone()
        return (r[0], r[1], r[2]) if r else None

    # -- writing ---------------------------------------------------------------------
    def begin(self, config_hash: str, config: dict[str, Any], method: str, model: str, task: str) -> str:
        """A new `running` row; refused if a live process is training the same config (single flight)."""
        run_id = f"{config_hash[:8]}-{uuid.uuid4().hex[:6]}"  # short enough to type
        self.db.execute("BEGIN IMMEDIATE")  # the check and the insert as one: two starts cannot both pass
        try:
            other = self.running(config_hash)
            if other:
                raise UserError(f"the same config is already training as run {other[0]} (pid {other[1]} on {other[2]}); "
                                "wait for it to finish, then rerun to reuse its result")
            self.db.execute(
                "INSERT INTO runs(run_id, config_hash, status, method, model, task, created, pid, host, config) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, config_hash, "running", method, model, task, time.time(), os.getpid(),
                 socket.gethostname(), json.dumps(config)),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return run_id

    def staging(self, run_id: str) -> Path:
        """A private folder for a run's files; renamed into place by finish()."""
        path = self.runs_dir / f".tmp-{run_id}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def adapter_dir(self, staged: Path) -> Path:
        """Where a staged run's method saves its weights."""
        return staged / run_folder.ADAPTER

    def finish(self, run_id: str, output: RunOutput, staged: Path) -> None:
        """Write the run's files, move its folder into place, then mark it done in one transaction."""
        config_hash, config, created = self.db.execute(
            "SELECT config_hash, config, created FROM runs WHERE run_id=?", (run_id,)).fetchone()
        finished = time.time()
        identity = {"run_id": run_id, "config_hash": config_hash, "created": created, "finished": finished}
        run_folder.write(staged, json.loads(config), output, identity)
        final = self.runs_dir / run_id
        staged.rename(final)  # atomic on one filesystem
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self._insert_curve(run_id, output.curve)
            self.db.execute(
                "UPDATE runs SET status='superseded' WHERE config_hash=? AND status='done'", (config_hash,)
            )
            self.db.execute(
                "UPDATE runs SET status='done', finished=?, result=? WHERE run_id=?",
                (finished, json.dumps(output.result.to_dict()), run_id),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def import_run(self, config_hash: str, config: dict[str, Any], shipped: Any,
                   force: bool = False) -> tuple[RunRow, bool]:
        """A run trained elsewhere (store/shipped.py): staged, then finished atomically; (row, skipped)."""
        from peftbench.store.shipped import import_run

        return import_run(self, config_hash, config, shipped, force)

    def _insert_curve(self, run_id: str, curve: Curve) -> None:
        self.db.executemany(
            "INSERT INTO evals(run_id, step, tokens, train_flops, seconds, train_loss, metrics) VALUES (?,?,?,?,?,?,?)",
            [(run_id, p["step"], p["tokens"], p["train_flops"], p["seconds"], p["train_loss"],
              json.dumps(p["metrics"])) for p in curve],
        )

    @classmethod
    def rebuild(cls, root: str | Path) -> integrity.Rebuilt:
        """The index from the run folders: a damaged, empty or missing index is set aside and written anew;
        a sound one gains the finished runs whose folders it lacks. Failed and interrupted runs have no
        folder, so a new index does not list them."""
        root = Path(root)
        out = integrity.Rebuilt()
        if not (root / integrity.INDEX).exists() or integrity.damage(root / integrity.INDEX):
            out.aside = integrity.set_aside(root)
        with cls(root, check=False) as store:
            known = {r[0] for r in store.db.execute("SELECT run_id FROM runs").fetchall()}
            for folder in integrity.run_folders(store.runs_dir):
                try:
                    entry = integrity.read_folder(folder)
                except (OSError, ValueError, KeyError, TypeError) as e:
                    out.skipped.append(f"{folder.name} ({type(e).__name__}: {e})")
                    continue
                if entry["run_id"] not in known:
                    store._restore(entry)
                    out.restored.append(entry["run_id"])
        return out

    def _restore(self, e: dict[str, Any]) -> None:
        """One finished run from its folder; an older done run of the same config becomes superseded."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            newer = self.db.execute("SELECT 1 FROM runs WHERE config_hash=? AND status='done' AND finished>?",
                                    (e["config_hash"], e["finished"])).fetchone()
            if not newer:
                self.db.execute("UPDATE runs SET status='superseded' WHERE config_hash=? AND status='done'",
                                (e["config_hash"],))
            self.db.execute(
                "INSERT INTO runs(run_id, config_hash, status, method, model, task, created, finished, config, result) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                (e["run_id"], e["config_hash"], "superseded" if newer else "done", e["method"], e["model"], e["task"],
                 e["created"], e["finished"], json.dumps(e["config"]), json.dumps(e["result"])),
            )
            self._insert_curve(e["run_id"], e["curve"])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def fail(self, run_id: str, status: str, error: str, staged: Path | None = None) -> None:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        try:
            self.db.execute(
                "UPDATE runs SET status=?, finished=?, error=? WHERE run_id=? AND status='running'",
                (status, time.time(), error[:2000], run_id),
            )
        except sqlite3.Error:  # e.g. the disk is full: the row stays running, and the next open reaps it
            pass

    # -- reading ---------------------------------------------------------------------
    _COLS = "run_id, config_hash, status, method, model, task, created, finished, config, result, error"

    def _row(self, r: tuple) -> RunRow:
        return RunRow(
            run_id=r[0], config_hash=r[1], status=r[2], method=r[3], model=r[4], task=r[5], created=r[6],
            finished=r[7], config=json.loads(r[8] or "{}"), result=json.loads(r[9]) if r[9] else None,
            error=r[10], folder=self.runs_dir / r[0],
        )

    def find_done(self, config_hash: str) -> RunRow | None:
        r = self.db.execute(
            f"SELECT {self._COLS} FROM runs WHERE config_hash=? AND status='done' ORDER BY finished DESC LIMIT 1",
            (config_hash,),
        ).fetchone()
        return self._row(r) if r else None

    def list(self, status: str | None = None) -> list[RunRow]:
        q, args = f"SELECT {self._COLS} FROM runs", ()
        if status:
            q, args = q + " WHERE status=?", (status,)
        return [self._row(r) for r in self.db.execute(q + " ORDER BY created", args).fetchall()]

    def get(self, ident: str) -> RunRow:
        """A run by run id or config hash (or a unique prefix of either); done runs first."""
        if not ident.strip():
            raise UserError("no run id given; list them with: peftbench results")
        # A literal prefix, not LIKE: '%' and '_' in an id must not match other runs.
        n = len(ident)
        rows = self.db.execute(
            f"SELECT {self._COLS} FROM runs WHERE substr(run_id, 1, ?) = ? OR substr(config_hash, 1, ?) = ? "
            "ORDER BY status='done' DESC, created DESC",
            (n, ident, n, ident),
        ).fetchall()
        if not rows:
            raise UserError(f"no stored run matches '{ident}'; list them with: peftbench results")
        if len({r[1] for r in rows}) > 1:
            raise UserError(f"'{ident}' matches several runs; give more characters of the id")
        return self._row(rows[0])

    def result(self, ident: str) -> RunResult | None:
        """A run's result, typed (see get() for ident); None until it is done."""
        return self.get(ident).run_result

    def predictions(self, run_id: str) -> Predictions | None:
        """A run's stored test predictions and references; None if it has none."""
        return run_folder.predictions(self.runs_dir / run_id)

    def curve(self, run_id: str) -> Curve:
        rows = self.db.execute(
            "SELECT step, tokens, train_flops, seconds, train_loss, metrics FROM evals WHERE run_id=? ORDER BY step",
            (run_id,),
        ).fetchall()
        return [
            {"step": s, "tokens": t, "train_flops": f, "seconds": sec, "train_loss": l, "metrics": json.loads(m)}
            for s, t, f, sec, l, m in rows
        ]
