"""The index (results.sqlite) is a cache of the run folders: check it on open, rebuild it from them.

Each finished run's folder holds its config, metrics and curve (and run.json: its id, config
hash and times), so a damaged, empty or missing index loses nothing. It is never replaced
silently: opening refuses in one line, and `peftbench results --rebuild` keeps the damaged
file aside before writing a new index from the folders.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.errors import UserError

INDEX = "results.sqlite"


def run_folders(runs_dir: Path) -> list[Path]:
    """Finished runs' folders (staging folders start with a dot)."""
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / "metrics.json").is_file())


def damage(path: Path) -> str | None:
    """Why the index file cannot be trusted, or None if it is sound (or does not exist yet)."""
    if not path.exists() or path.stat().st_size == 0:
        return None if not path.exists() else "empty (0 bytes)"
    try:
        verdict = _quick_check(path)
    except sqlite3.DatabaseError as e:
        if not _corrupt(e):  # locked, a full disk, permissions: the file itself may be sound
            raise UserError(f"cannot read the results index {path} ({e}): the disk may be full, "
                            "or check the folder's permissions") from None
        return f"unreadable ({e})"
    return None if verdict == ["ok"] else f"damaged ({'; '.join(verdict[:2])})"


def _corrupt(e: sqlite3.DatabaseError) -> bool:
    return not isinstance(e, sqlite3.OperationalError) or "malformed" in str(e) or "not a database" in str(e)


def _quick_check(path: Path) -> list[str]:
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            return [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.OperationalError as e:
        if _corrupt(e) or not snapshot_readable(path):
            raise
        # Reading a WAL index creates its -shm file; where nothing can be written, read a snapshot.
        with closing(sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)) as db:
            return [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]


def snapshot_readable(path: Path) -> bool:
    """True when the index file alone holds everything: no write-ahead log with pages not yet in it."""
    wal = Path(f"{path}-wal")
    return not wal.exists() or wal.stat().st_size == 0


def check(root: Path) -> None:
    """Refuse an index that would hide finished runs: damaged, or empty/missing next to run folders."""
    path = root / INDEX
    folders = run_folders(root / "runs")
    why = damage(path) if path.exists() else "missing"
    if why is None or (not folders and why in ("missing", "empty (0 bytes)")):  # nothing could be hidden
        return
    kept = f"; {len(folders)} finished run folder(s) are safe in {root / 'runs'}" if folders else ""
    raise UserError(f"the results index {path} is {why}{kept}: rebuild it with: "
                    f"peftbench results --rebuild --results-dir {root} (the old file is kept aside)")


@dataclass
class Rebuilt:
    restored: list[str] = field(default_factory=list)  # run ids put back into the index
    skipped: list[str] = field(default_factory=list)  # folders that could not be read, with why
    aside: Path | None = None  # where the damaged index was moved


def set_aside(root: Path) -> Path | None:
    """Move a damaged or empty index (and its WAL files) out of the way; returns the new name."""
    path = root / INDEX
    if not path.exists():
        return None
    aside = root / f"{INDEX}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            Path(f"{path}{suffix}").rename(f"{aside}{suffix}")
    return aside


def read_folder(folder: Path) -> dict[str, Any]:
    """A run folder as the index stores it; raises ValueError/OSError/KeyError when it is unreadable."""
    config = json.loads((folder / "config.json").read_text())
    result = json.loads((folder / "metrics.json").read_text())
    curve = json.loads((folder / "curve.json").read_text())
    meta_file = folder / "run.json"  # absent in folders written before it existed
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if not isinstance(config, dict) or not isinstance(result, dict) or not isinstance(curve, list):
        raise ValueError("config, metrics or curve has the wrong shape")
    from peftbench.store.folder import digest

    finished = meta.get("finished", (folder / "metrics.json").stat().st_mtime)
    return {
        "run_id": meta.get("run_id", folder.name),
        "config_hash": meta.get("config_hash") or digest(config, result.get("versions") or {}),
        "method": config["method"]["name"], "model": config["model"]["name"], "task": config["task"]["kind"],
        "created": meta.get("created", finished), "finished": finished,
        "config": config, "result": result, "curve": curve,
    }
