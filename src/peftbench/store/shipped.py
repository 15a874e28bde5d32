"""A run trained elsewhere (a Ray worker on another machine), shipped back and imported by the driver.

The worker trains into a throwaway results folder of its own and sends back its finished run
folder as tar bytes; only the driver's store writes SQLite and run folders. The import is a
local run's ending: a `running` row (begin), the files in a staging folder, then finish renames
the folder into place and marks the row done in one transaction. A driver killed midway leaves
a row that the next open marks interrupted and no folder, so a rerun trains that config again.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftbench.store import folder as run_folder
from peftbench.store import integrity
from peftbench.store.result import RunOutput, RunResult

if TYPE_CHECKING:
    from peftbench.store.sqlite import RunRow, Store

DROPPED = "dropped"  # RunResult.weights: the full fine-tuning weights were not kept (--keep-weights adapters)


@dataclass
class Shipped:
    """What a worker's run became: plain data, it crosses Ray's object store."""

    status: str  # done | failed | interrupted, as the worker's own store recorded it
    folder: bytes | None = None  # tar of the run folder (metrics, curve, predictions, adapter/) when done
    error: str | None = None  # the worker store's error text when not done
    weights: str | None = None  # DROPPED when the run's full weights stayed behind on the worker


def pack(path: Path, skip: tuple[str, ...] = ()) -> bytes:
    """A file or folder as tar bytes (names relative to it; top-level entries in `skip` left out).
    Links are stored as what they point to: a hub cache's snapshot folder links to blobs beside it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", dereference=True) as tar:
        if path.is_file():
            tar.add(path, arcname=path.name)
        else:
            for child in sorted(path.iterdir()):
                if child.name not in skip:
                    tar.add(child, arcname=child.name)
    return buf.getvalue()


def unpack(data: bytes, dest: Path) -> None:
    """Tar bytes into dest; the 'data' filter refuses absolute names, '..' and links leaving dest."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")


def import_run(store: Store, config_hash: str, config: dict[str, Any], shipped: Shipped,
               force: bool = False) -> tuple[RunRow, bool]:
    """Store a shipped run under the driver's config and hash; (its row, True if skipped because the
    config is already done here). A failed run becomes the failed row a local run would leave."""
    if not force and (done := store.find_done(config_hash)):
        return done, True
    run_id = store.begin(config_hash, config, config["method"]["name"], config["model"]["name"], config["task"]["kind"])
    if shipped.status != "done" or shipped.folder is None:
        status = shipped.status if shipped.status != "done" else "failed"
        store.fail(run_id, status, shipped.error or "no run folder came back")
        return store.get(run_id), False
    staged = store.staging(run_id)
    try:
        unpack(shipped.folder, staged)
        entry = integrity.read_folder(staged)
        result = {**entry["result"], "weights": shipped.weights} if shipped.weights else entry["result"]
        output = RunOutput(RunResult.from_dict(result, config), entry["curve"], run_folder.predictions(staged))
        store.finish(run_id, output, staged)  # rewrites run.json and config.json as the driver's
    except BaseException as err:
        store.fail(run_id, "failed", f"the shipped run could not be stored: {type(err).__name__}: {err}", staged)
        raise
    return store.get(run_id), False
