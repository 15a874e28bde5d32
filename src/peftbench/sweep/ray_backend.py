"""Running a sweep's configs as Ray tasks, on one machine or a cluster without a shared filesystem.

Workers never touch the results folder: each task trains in a node-local folder and returns its
finished run as bytes through Ray's object store (sweep/remote.py); only this process, the driver,
stores runs, atomically, as a local run does (Store.import_run). A driver killed mid-sweep loses
only the runs in flight; the same command resumes by config hash. Local data files and model
folders named in the configs are shipped to the workers (sweep/ship.py) unless `shared_inputs`
says they exist at the same path on every node. A worker that dies mid-run is retried once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

from peftbench.errors import UserError
from peftbench.store.shipped import Shipped, unpack
from peftbench.sweep.local import Outcome
from peftbench.sweep.remote import Returned, work
from peftbench.sweep.ship import check_size, local_paths, ship, version_mismatch

def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("the ray backend needs Ray: pip install 'peftbench[ray]'") from None
    return ray


def connect(address: str | None, workers: int, cores: int) -> bool:
    """Join the cluster at `address`, or start a local Ray of `workers` CPUs (all cores for one worker);
    False when this process is already connected (that session is the caller's to end)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=workers if workers > 1 else cores, include_dashboard=False, log_to_driver=False)
    return True


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def merge_logs(data: bytes, results_dir: Path) -> None:
    """A task's tracker logs into the results folder, never replacing a file already there."""
    with tempfile.TemporaryDirectory(dir=results_dir) as tmp:
        unpack(data, Path(tmp))
        for src in Path(tmp).rglob("*"):
            dest = results_dir / src.relative_to(tmp)
            if src.is_file() and not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(src, dest)


def store_returned(store: Any, identity: tuple[str, dict[str, Any]], back: Returned, force: bool) -> Outcome:
    """The driver's half of one task: the worker's run imported under the driver's config and hash."""
    out, shipped = back.outcome, back.shipped
    why = version_mismatch(out.node or "?", back.versions) if shipped and shipped.status == "done" else None
    if why:
        shipped = Shipped("failed", error=why)
        out.status, out.error = "failed", why
    if back.trackers:
        merge_logs(back.trackers, store.root)
    if shipped is None:  # refused before its store was touched: a local run stores nothing either
        return out
    try:
        row, skipped = store.import_run(*identity, shipped, force)
    except UserError as e:  # e.g. another live process trains the same config: that one's result counts
        out.status, out.error = "failed", str(e)
        return out
    except Exception as e:  # noqa: BLE001 - stored as failed (import_run); as a local run's, it stops only itself
        out.status, out.error = "failed", _one_line(e)
        return out
    out.run_id = row.run_id
    if skipped:
        out.status = "skipped"
    return out


def run_ray(jobs: list[tuple[int, dict[str, Any]]], results_dir: Path, force: bool, address: str | None,
            workers: int, cores: int, report_to: list[str] | None,
            identities: dict[int, tuple[str, dict[str, Any]]], keep_weights: str = "all",
            shared_inputs: bool = False) -> Iterator[tuple[str, Any]]:
    """Yields ("slots", runs at once), then ("end", Outcome) as tasks finish, in the order they finish.

    identities: index -> (config hash, stored config) under which the driver stores each run: as runner.run
    hashes a config, normalized (method defaults and rate filled in)."""
    from peftbench.store import Store

    ray = require_ray()
    paths = [] if shared_inputs else local_paths([c for _, c in jobs])
    check_size(paths)  # before Ray starts: too large is refused in one line
    started = connect(address, workers, cores)
    try:
        resources = ray.cluster_resources()
        gpu = resources.get("GPU", 0) > 0
        yield "slots", max(1, int(resources.get("GPU" if gpu else "CPU", 1)))
        # A task holds one GPU where there are GPUs, else one CPU (torch then uses one thread). SPREAD: runs
        # are independent and compute-bound, so an idle node beats a busy one (Ray's default packs them and
        # may queue them all on one node); runs sharing a node also distort each other's timings.
        remote = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=1, scheduling_strategy="SPREAD")(work)
        inputs = ship(paths, ray.put)
        cwd = os.getcwd() if shared_inputs else None
        with closing(Store(results_dir)) as store:
            waiting = {remote.remote(i, c, inputs, keep_weights, cwd, report_to): i for i, c in jobs}
            while waiting:
                ready, _ = ray.wait(list(waiting), num_returns=1)
                index = waiting.pop(ready[0])
                try:
                    back = ray.get(ready[0])
                except Exception as e:  # noqa: BLE001 - its worker died twice (node lost, out of memory, killed)
                    error = _one_line(e)
                    # a dead worker's run ends interrupted, as a local one killed mid-run; an error in the task, failed
                    status = "failed" if isinstance(e, ray.exceptions.RayTaskError) else "interrupted"
                    row, _ = store.import_run(*identities[index], Shipped(status, error=error), True)
                    yield "end", Outcome(index, "failed", row.run_id, error=error)
                    continue
                yield "end", store_returned(store, identities[index], back, force)
    finally:
        if started:
            ray.shutdown()
