"""A Ray task's side of a cluster sweep: train one config in a node-local folder and ship the run back.

The task never sees the driver's results folder. It unpacks the shipped inputs into a per-node
cache (under the node's temp folder, TMPDIR), points the config at those copies, trains into a
throwaway results folder of its own, and returns the run folder as bytes (store/shipped.py) for
the driver to store. Its folder is removed afterwards; one left by a killed worker is removed by
the next task on that node.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.store.shipped import DROPPED, Shipped, pack, unpack
from peftbench.sweep.local import Outcome, execute
from peftbench.sweep.ship import Input, rewrite

KILL_ONCE = "PEFTBENCH_TEST_KILL_ONCE"  # tests only: a folder; the first task to train a step there dies (os._exit),
# and while the folder holds a file `always`, every task does (a run whose worker dies on its retry too)
INDEX_FILES = ("runs", "checkpoints", "results.sqlite", "results.sqlite-wal", "results.sqlite-shm")


@dataclass
class Returned:
    """A task's answer: plain data, through Ray's object store."""

    outcome: Outcome
    shipped: Shipped | None  # None: refused before anything was stored (bad input), as a local run stores nothing
    versions: dict[str, str]  # the worker's, which the driver's config hash assumes
    trackers: bytes | None = None  # tar of the tracker logs (tensorboard/, mlruns/, wandb/) the run wrote


class _KillOnce:
    """A Reporter that ends the process at the first training step, once per KILL_ONCE folder: a worker
    killed mid-run, for the retry test."""

    def __init__(self, folder: str) -> None:
        self.marker = Path(folder) / "killed"

    def step(self, step: int) -> None:
        if (self.marker.parent / "always").exists():
            os._exit(9)
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exactly one task wins
        except FileExistsError:
            return
        os.close(fd)
        os._exit(9)

    def start(self, total_steps: int) -> None: ...
    def evaluating(self, split: str, done: int, total: int) -> None: ...
    def evaluated(self, point: Any) -> None: ...


def node_name() -> str:
    """The host, and Ray's node id where there is one (several nodes may share a host)."""
    import ray

    if not ray.is_initialized():  # called outside a Ray task (tests)
        return socket.gethostname()
    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


def _reap(base: Path) -> None:
    """Task folders of workers that died (a kill, a lost retry) on this node."""
    from peftbench.store.sqlite import pid_alive

    for old in base.glob("task-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def materialise(inputs: dict[str, Input], cache: Path) -> dict[str, str]:
    """Each shipped input as a node-local copy, unpacked once per node; config value -> the copy's path."""
    import ray

    copies = {}
    for value, item in inputs.items():
        where = cache / item.key
        if not where.is_dir():
            tmp = cache / f".tmp-{item.key}-{uuid.uuid4().hex[:6]}"
            unpack(ray.get(item.ref), tmp / item.name if item.folder else tmp)
            try:
                tmp.rename(where)  # atomic; another task on this node may have been first
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        copies[value] = str(where / item.name)
    return copies


def collect(results: Path, keep_weights: str) -> tuple[Shipped | None, bytes | None]:
    """The run the task's own store holds, ready to ship; and its tracker logs."""
    from peftbench.methods import get_method
    from peftbench.store import Store

    if not (results / "results.sqlite").exists():
        return None, None
    with closing(Store(results)) as store:
        rows = store.list()
    if not rows:
        return None, None
    row = rows[-1]
    trackers = [p for p in results.iterdir() if p.name not in INDEX_FILES]
    logs = pack(results, skip=INDEX_FILES) if trackers else None
    if row.status != "done":
        return Shipped(row.status, error=row.error), logs
    drop = keep_weights == "adapters" and not get_method(row.method).frozen_base  # full fine-tuning's whole model
    return Shipped("done", pack(row.folder, skip=("adapter",) if drop else ()), weights=DROPPED if drop else None), logs


def work(index: int, config: dict[str, Any], inputs: dict[str, Input], keep_weights: str, cwd: str | None,
         report_to: list[str] | None) -> Returned:
    """The Ray task: one config, trained here, returned as bytes. cwd: the driver's working folder when
    the inputs exist on every node (--shared-inputs), so relative paths behave as locally."""
    import torch

    from peftbench.runner import versions
    from peftbench.train.threads import fix

    torch.set_num_threads(1)  # a task holds one CPU
    fix(1, "ray task: 1 CPU")  # each run sets and records it (runner)
    base = Path(tempfile.gettempdir()) / "peftbench-ray"
    root = base / f"task-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    _reap(base)
    before = os.getcwd()
    try:
        config = rewrite(config, materialise(inputs, base / "inputs"))
        os.chdir(cwd if cwd and os.path.isdir(cwd) else root)
        hook = _KillOnce(os.environ[KILL_ONCE]) if os.environ.get(KILL_ONCE) else None
        outcome = execute(index, config, str(root / "results"), True, report_to, reporter=hook)
        outcome.node, outcome.run_id = node_name(), None  # the run id is the driver's to give
        shipped, logs = collect(root / "results", keep_weights)
        return Returned(outcome, shipped, versions(), logs)
    finally:
        os.chdir(before)
        shutil.rmtree(root, ignore_errors=True)
